import math
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from liftplus.data.images import resize_shape
from liftplus.data.transforms import (
    MinimalistRandomResizedCrop,
    RandomResizedCropFlip,
    eval_resize,
    five_crop_boxes,
    mda_min_scale,
    normalize_batch,
    sample_mda_box,
    sample_rrc_box,
    to_uint8_tensor,
    train_transform,
    tte_transform,
)
from liftplus.data.transforms import (
    test_transform as make_test_transform,
)
from liftplus.errors import ParamsError

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def coordinate_image(height, width):
    """RGB image whose red channel is the row and green channel the column of each pixel."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pixels = np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def random_image(height, width, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def coordinates(tensor, row, col):
    """(row, col) encoded at a pixel of a crop normalised with mean 0, std 1."""
    return round(tensor[0, row, col].item() * 255), round(tensor[1, row, col].item() * 255)


# --- MDA schedule ----------------------------------------------------------------


def expected_scale(s):
    return 0.08 + 0.92 * s


@pytest.mark.parametrize("epoch, t", [(0, 0.0), (1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0)])
def test_mda_min_scale_all_schedules(epoch, t):
    assert mda_min_scale(epoch, 5, "min") == pytest.approx(0.08)
    assert mda_min_scale(epoch, 5, "max") == pytest.approx(1.0)
    assert mda_min_scale(epoch, 5, "linear") == pytest.approx(expected_scale(t))
    assert mda_min_scale(epoch, 5, "convex") == pytest.approx(expected_scale(1 - (1 - t * t) ** 0.5))
    assert mda_min_scale(epoch, 5, "concave") == pytest.approx(expected_scale((1 - (1 - t) ** 2) ** 0.5))


def test_mda_convex_over_five_epochs_hand_figures():
    values = [mda_min_scale(e, 5, "convex") for e in range(5)]
    # 0.08 + 0.92 * (1 - sqrt(1 - t^2)) at t = 0, 1/4, 1/2, 3/4, 1
    assert values == pytest.approx([0.08, 0.1092, 0.2033, 0.3915, 1.0], abs=1e-4)
    assert [mda_min_scale(e, 5, "linear") for e in range(5)] == pytest.approx([0.08, 0.31, 0.54, 0.77, 1.0])
    assert mda_min_scale(1, 5, "concave") == pytest.approx(0.6885, abs=1e-4)
    assert mda_min_scale(2, 5, "concave") == pytest.approx(0.8767, abs=1e-4)


def test_mda_min_scale_single_epoch_and_custom_scale():
    assert mda_min_scale(0, 1, "convex") == pytest.approx(0.08)
    assert mda_min_scale(0, 1, "max") == pytest.approx(1.0)
    assert mda_min_scale(1, 3, "linear", scale=(0.2, 0.6)) == pytest.approx(0.4)


def test_mda_min_scale_rejects_bad_input():
    with pytest.raises(ParamsError, match="train.mda_schedule"):
        mda_min_scale(0, 5, "cosine")
    with pytest.raises(ValueError):
        mda_min_scale(5, 5)


# --- box sampling ------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(30, 50), (64, 64), (100, 37), (1, 9)])
def test_mda_box_is_square_inside_and_within_area_bounds(height, width):
    short = min(height, width)
    smallest = round(math.sqrt(min(0.08, short**2 / (height * width)) * height * width))
    for seed in range(200):
        i, j, h, w = sample_mda_box(height, width, 0.08, generator=torch.Generator().manual_seed(seed))
        assert h == w
        assert 0 <= i and i + h <= height and 0 <= j and j + w <= width
        assert smallest <= h <= short


def test_mda_box_full_scale_takes_largest_square():
    lefts = set()
    for seed in range(50):
        i, j, h, w = sample_mda_box(30, 50, 1.0, generator=torch.Generator().manual_seed(seed))
        assert (i, h, w) == (0, 30, 30)
        lefts.add(j)
    assert lefts <= set(range(21)) and len(lefts) > 5
    assert sample_mda_box(50, 30, 1.0, generator=torch.Generator().manual_seed(0))[1:] == (0, 30, 30)


def test_mda_box_generator_matches_global_rng_and_leaves_it_alone():
    torch.manual_seed(11)
    from_global = [sample_mda_box(40, 60, 0.3) for _ in range(5)]
    gen = torch.Generator().manual_seed(11)
    assert [sample_mda_box(40, 60, 0.3, generator=gen) for _ in range(5)] == from_global

    torch.manual_seed(3)
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    sample_mda_box(40, 60, 0.3, generator=torch.Generator().manual_seed(0))
    assert torch.rand(1) == expected_next


@pytest.mark.parametrize("height, width", [(40, 60), (300, 200), (10, 100)])
def test_rrc_box_matches_torchvision_draw_for_draw(height, width):
    img = Image.new("RGB", (width, height))
    for seed in range(30):
        torch.manual_seed(seed)
        expected = T.RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3])
        assert sample_rrc_box(height, width, generator=torch.Generator().manual_seed(seed)) == expected


def test_standard_crop_flip_equals_torchvision_pair():
    img = random_image(48, 64)
    reference = T.Compose([T.RandomResizedCrop(32, interpolation=InterpolationMode.BICUBIC), T.RandomHorizontalFlip()])
    ours = RandomResizedCropFlip(32)
    for seed in range(6):
        torch.manual_seed(seed)
        expected = np.asarray(reference(img))
        got = np.asarray(ours(img, generator=torch.Generator().manual_seed(seed)))
        assert np.array_equal(got, expected)


def test_mda_last_convex_epoch_crops_the_largest_square():
    crop = MinimalistRandomResizedCrop(30, epochs=5, schedule="convex")
    crop.set_epoch(4)
    assert crop.min_scale == pytest.approx(1.0)
    img = coordinate_image(30, 50)
    for seed in range(10):
        out = TF.to_tensor(crop(img, generator=torch.Generator().manual_seed(seed)))
        top, left = coordinates(out, 0, 0)
        assert top == 0 and 0 <= left <= 20
        assert coordinates(out, 29, 29) == (29, left + 29)


def test_mda_set_epoch_changes_min_scale():
    crop = MinimalistRandomResizedCrop(32, epochs=5)
    assert crop.min_scale == pytest.approx(0.08)
    crop.set_epoch(2)
    assert crop.min_scale == pytest.approx(expected_scale(1 - math.sqrt(0.75)))
    crop.set_epoch(0)
    assert crop.min_scale == pytest.approx(0.08)


# --- full transforms -------------------------------------------------------------------


def test_train_transform_mda_is_seeded_and_rgb():
    transform = train_transform(32, MEAN, STD, epochs=5)
    gray = random_image(28, 28, mode="L")
    a = transform(gray, generator=torch.Generator().manual_seed(5))
    b = transform(gray, generator=torch.Generator().manual_seed(5))
    c = transform(gray, generator=torch.Generator().manual_seed(6))
    assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    # grayscale replicated: channel k is (v - mean_k) / std_k of the same v
    gray_values = [a[k] * STD[k] + MEAN[k] for k in range(3)]
    assert torch.allclose(gray_values[0], gray_values[1], atol=1e-5)
    assert torch.allclose(gray_values[0], gray_values[2], atol=1e-5)


def test_train_transform_without_mda_is_standard_augmentation():
    transform = train_transform(32, MEAN, STD, epochs=5, mda=False)
    assert isinstance(transform.crop, RandomResizedCropFlip)
    transform.set_epoch(3)
    assert transform(random_image(40, 50)).shape == (3, 32, 32)


def test_train_transform_uint8_then_normalize_equals_float_path():
    img = random_image(45, 60, seed=3)
    as_float = train_transform(32, MEAN, STD, epochs=5)
    as_uint8 = train_transform(32, MEAN, STD, epochs=5, uint8=True)
    expected = as_float(img, generator=torch.Generator().manual_seed(9))
    raw = as_uint8(img, generator=torch.Generator().manual_seed(9))
    assert raw.dtype == torch.uint8 and raw.shape == (3, 32, 32)
    assert torch.allclose(normalize_batch(raw[None], MEAN, STD)[0], expected, atol=1e-6, rtol=0)


def test_to_uint8_and_normalize_batch_equal_totensor_normalize():
    crops = [random_image(24, 24, seed=s) for s in range(3)] + [random_image(24, 24, mode="L", seed=9)]
    batch = torch.stack([to_uint8_tensor(c) for c in crops])
    assert batch.dtype == torch.uint8 and batch.shape == (4, 3, 24, 24)
    reference = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
    expected = torch.stack([reference(c.convert("RGB")) for c in crops])
    assert torch.allclose(normalize_batch(batch, MEAN, STD), expected, atol=1e-6, rtol=0)
    # a hand value: 255 in channel 0 -> (1 - mean) / std
    white = normalize_batch(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), MEAN, STD)
    assert white[0, 0, 0, 0].item() == pytest.approx((1 - MEAN[0]) / STD[0], rel=1e-6)


def test_test_transform_gray_28_to_rgb_32():
    out = make_test_transform(32, MEAN, STD)(random_image(28, 28, mode="L"))
    assert out.shape == (3, 32, 32)
    flat = Image.new("L", (40, 28), 128)
    out = make_test_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(flat)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, torch.full_like(out, (128 / 255 - 0.5) / 0.25), atol=1e-6)
    raw = make_test_transform(32, MEAN, STD, uint8=True)(flat)
    assert raw.dtype == torch.uint8 and torch.all(raw == 128)


def test_test_transform_centre_crops_after_resize_to_res_plus_res_over_7():
    # 36 = 32 + 32 // 7: a 36 x 48 image is not resized, so the centre crop starts at (2, 8)
    out = make_test_transform(32, (0, 0, 0), (1, 1, 1))(coordinate_image(36, 48))
    assert coordinates(out, 0, 0) == (2, 8)
    assert coordinates(out, 31, 31) == (33, 39)


def test_test_transform_takes_an_explicit_expand():
    """``evaluate.tte_expand`` set with TTE off: the centre crop follows it (it used to be ignored)."""
    # 40 = 32 + 8: a 40 x 48 image is not resized, so the centre crop starts at (4, 8)
    out = make_test_transform(32, (0, 0, 0), (1, 1, 1), expand=8)(coordinate_image(40, 48))
    assert coordinates(out, 0, 0) == (4, 8)
    assert coordinates(out, 31, 31) == (35, 39)


@pytest.mark.parametrize("tte, expand", [(False, None), (False, 8), (True, None), (True, 24), (True, 0)])
def test_test_and_tte_transforms_resize_to_eval_resize(tte, expand):
    """Both transforms take their short side from the one rule, whatever the expand."""
    transform = (
        tte_transform(32, MEAN, STD, expand=expand) if tte else make_test_transform(32, MEAN, STD, expand=expand)
    )
    [resize] = [step for step in transform.transforms if isinstance(step, T.Resize)]
    assert resize.size == eval_resize(32, tte, expand)
    assert resize.interpolation == InterpolationMode.BICUBIC


def test_tte_transform_default_is_the_reference_share_of_the_resolution():
    # 35 = 32 + round(24 * 32 / 224): a 35 x 45 image is not resized; corners 3 and 13 apart
    crops = tte_transform(32, (0, 0, 0), (1, 1, 1))(coordinate_image(35, 45))
    assert [coordinates(crop, 0, 0) for crop in crops] == [(0, 0), (0, 13), (3, 0), (3, 13), (2, 6)]


def test_five_crop_boxes_by_hand():
    assert five_crop_boxes(56, 72, 32) == [
        (0, 0, 32, 32),
        (0, 40, 32, 32),
        (24, 0, 32, 32),
        (24, 40, 32, 32),
        (12, 20, 32, 32),
    ]


@pytest.mark.parametrize("height, width", [(57, 73), (58, 56), (32, 32)])
def test_five_crop_boxes_centre_rounds_like_torchvision(height, width):
    centre = TF.to_tensor(TF.center_crop(coordinate_image(height, width), [32, 32]))
    top, left, _, _ = five_crop_boxes(height, width, 32)[4]
    assert coordinates(centre, 0, 0) == (top, left)


def test_tte_transform_gives_the_five_crops():
    # short side 56 = 32 + 24, so the resize keeps the coordinate image as it is
    crops = tte_transform(32, (0, 0, 0), (1, 1, 1), expand=24)(coordinate_image(56, 72))
    assert crops.shape == (5, 3, 32, 32)
    expected = [(0, 0), (0, 40), (24, 0), (24, 40), (12, 20)]
    for crop, (top, left) in zip(crops, expected):
        assert coordinates(crop, 0, 0) == (top, left)
        assert coordinates(crop, 0, 31) == (top, left + 31)
        assert coordinates(crop, 31, 0) == (top + 31, left)
        assert coordinates(crop, 31, 31) == (top + 31, left + 31)


def test_tte_transform_normalises_and_handles_grayscale():
    flat = Image.new("L", (100, 70), 200)
    crops = tte_transform(32, MEAN, STD)(flat)
    assert crops.shape == (5, 3, 32, 32)
    for k in range(3):
        assert torch.allclose(crops[:, k], torch.full_like(crops[:, k], (200 / 255 - MEAN[k]) / STD[k]), atol=1e-5)
    raw = tte_transform(32, MEAN, STD, uint8=True)(flat)
    assert raw.dtype == torch.uint8 and raw.shape == (5, 3, 32, 32)
    assert torch.allclose(normalize_batch(raw, MEAN, STD), crops, atol=1e-6)


@pytest.mark.parametrize("height, width, short", [(375, 500, 256), (500, 375, 256), (28, 28, 36), (81, 100, 56)])
def test_resize_shape_matches_torchvision_resize(height, width, short):
    resized = T.Resize(short, interpolation=InterpolationMode.BICUBIC)(Image.new("RGB", (width, height)))
    assert resize_shape(height, width, short) == (resized.height, resized.width)


def test_transforms_pickle_for_workers():
    for transform in (
        train_transform(32, MEAN, STD, epochs=5),
        train_transform(32, MEAN, STD, epochs=5, mda=False, uint8=True),
        make_test_transform(32, MEAN, STD),
        tte_transform(32, MEAN, STD),
    ):
        clone = pickle.loads(pickle.dumps(transform))
        assert clone(random_image(40, 40)).shape[-2:] == (32, 32)
