"""The input hand-offs: float (the reference's path), uint8 + device normalisation, encoded + device decode.

The device is the CPU here; the ``encoded`` path then decodes with torchvision's
CPU JPEG decoder and resizes with torch, exactly the code that runs on CUDA.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from shard_tars import sample, write_tar
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from liftplus.data.input_path import (
    EncodedBatch,
    EncodedInput,
    eval_input,
    finish_batch,
    resolve_hand_off,
    train_input,
)
from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
from liftplus.data.transforms import BICUBIC, eval_resize, resized_crop_uint8
from liftplus.errors import DataError

RES = 32
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)
CPU = torch.device("cpu")
EPOCHS = 3
SIZES = [(75, 60), (60, 75), (48, 48), (90, 52), (41, 64), (64, 64), (120, 90), (50, 100)]
"""(width, height) of the test photos: both orientations, square, and small enough to upscale."""


def photo(width: int, height: int, seed: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(base).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float64)
    field += rng.normal(0, 8, size=field.shape)
    image = Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))
    return image.convert(mode) if mode != "RGB" else image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    """JPEG photos of several sizes, one grayscale JPEG and one PNG (handed over decoded)."""
    samples = [sample(f"s{i:03d}", i % 3, encoded(photo(w, h, i), "JPEG"), "jpg") for i, (w, h) in enumerate(SIZES)]
    samples.append(sample("s100", 1, encoded(photo(70, 55, 100, mode="L"), "JPEG"), "jpg"))
    samples.append(sample("s101", 2, encoded(photo(66, 80, 101), "PNG"), "png"))
    return [write_tar(tmp_path_factory.mktemp("shards") / "train-000000.tar", samples)]


def batches(dataset: ShardIndex, epoch: int, workers: int = 0) -> list[torch.Tensor]:
    sampler = EpochBatchSampler(len(dataset), 4, shuffle=False)
    sampler.set_epoch(epoch)
    return [finish_batch(dataset.transform, images, CPU) for images, _ in make_loader(dataset, sampler, workers)]


def level_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| of normalised images in 8-bit grey levels."""
    std = torch.tensor(STD).view(-1, 1, 1)
    return (a - b).abs() * std * 255


def test_auto_is_uint8_on_cuda_and_float_elsewhere():
    assert resolve_hand_off("auto", torch.device("cuda")) == "uint8"
    assert resolve_hand_off("auto", CPU) == "float"
    assert resolve_hand_off("encoded", CPU) == "encoded"
    with pytest.raises(ValueError, match="'gpu' is not one of auto, float, uint8, encoded"):
        resolve_hand_off("gpu", CPU)


@pytest.mark.parametrize("mda", [True, False], ids=["mda", "rrc-flip"])
def test_encoded_workers_draw_the_cpu_transforms_boxes(shard, mda):
    """The encoded path's box and flip for (seed, epoch, i) are the ones the float path cropped with:
    cropping the decoded image at that box reproduces the float path's uint8 crop bit for bit."""
    float_set = ShardIndex(shard, train_input("float", RES, MEAN, STD, EPOCHS, mda=mda), seed=7)
    encoded_set = ShardIndex(shard, train_input("encoded", RES, MEAN, STD, EPOCHS, mda=mda), seed=7)
    flips = set()
    for epoch in range(EPOCHS):
        for i in range(len(float_set)):
            expected, label = float_set[(epoch, i)]
            (payload, is_jpeg, box, flip), encoded_label = encoded_set[(epoch, i)]
            assert label == encoded_label and is_jpeg == (float_set.samples[i].ext == "jpg")
            image = float_set.decode(i)
            crop = TF.resized_crop(image, *box, [RES, RES], BICUBIC, antialias=True)
            crop = TF.hflip(crop) if flip else crop
            assert torch.equal(TF.pil_to_tensor(crop), expected), (epoch, i, box)
            flips.add(flip)
    assert flips == ({False} if mda else {False, True})


@pytest.mark.parametrize("mda", [True, False], ids=["mda", "rrc-flip"])
def test_torch_resize_cuts_the_same_boxes_within_a_grey_level_of_pil(shard, mda):
    """``resize: torch`` crops the box (and flip) the PIL path drew; only the resampler's rounding differs."""
    pil_set = ShardIndex(shard, train_input("uint8", RES, MEAN, STD, EPOCHS, mda=mda), seed=3)
    torch_set = ShardIndex(shard, train_input("uint8", RES, MEAN, STD, EPOCHS, mda=mda, resize="torch"), seed=3)
    boxes = ShardIndex(shard, train_input("encoded", RES, MEAN, STD, EPOCHS, mda=mda), seed=3)
    differing = total = 0
    for epoch in range(EPOCHS):
        for i in range(len(pil_set)):
            (_, _, box, flip), _ = boxes[(epoch, i)]
            got, label = torch_set[(epoch, i)]
            assert label == pil_set.samples[i].label and got.dtype == torch.uint8 and got.is_contiguous()
            assert torch.equal(got, resized_crop_uint8(torch_set.decode(i), box, RES, flip)), (epoch, i, box)
            difference = (got.int() - pil_set[(epoch, i)][0].int()).abs()
            assert difference.max().item() <= 1, (epoch, i, box)
            differing += int((difference > 0).sum())
            total += difference.numel()
    assert differing / total < 0.03


def test_torch_resize_is_an_option_of_the_uint8_crops_only():
    from liftplus.data.transforms import train_transform
    from liftplus.errors import ParamsError

    with pytest.raises(ValueError, match="resize='torch' makes uint8 crops"):
        train_transform(RES, MEAN, STD, EPOCHS, resize="torch")
    with pytest.raises(ParamsError, match="train.resize is 'cv2', expected one of pil, torch"):
        train_transform(RES, MEAN, STD, EPOCHS, uint8=True, resize="cv2")


def test_float_batches_equal_the_references_per_image_transform(shard):
    """``float`` normalises whole batches in the worker; the reference normalises image by image."""
    from liftplus.data.transforms import train_transform

    batched = batches(ShardIndex(shard, train_input("float", RES, MEAN, STD, EPOCHS), seed=4), epoch=1, workers=2)
    per_image = ShardIndex(shard, train_transform(RES, MEAN, STD, EPOCHS), seed=4)
    expected = torch.stack([per_image[(1, i)][0] for i in range(len(per_image))])
    assert torch.cat(batched).dtype == torch.float32
    assert (torch.cat(batched) - expected).abs().max().item() < 1e-6


def test_uint8_hand_off_equals_the_float_path(shard):
    for make in (
        lambda hand_off: train_input(hand_off, RES, MEAN, STD, EPOCHS),
        lambda hand_off: train_input(hand_off, RES, MEAN, STD, EPOCHS, mda=False, resize="torch"),
        lambda hand_off: eval_input(hand_off, RES, MEAN, STD),
        lambda hand_off: eval_input(hand_off, RES, MEAN, STD, tte=True, expand=4),
    ):
        as_float = batches(ShardIndex(shard, make("float"), seed=1), epoch=1)
        as_uint8 = batches(ShardIndex(shard, make("uint8"), seed=1), epoch=1, workers=2)
        for a, b in zip(as_float, as_uint8):
            assert a.dtype == b.dtype == torch.float32 and a.shape == b.shape
            assert (a - b).abs().max().item() < 1e-6


@pytest.mark.parametrize("kind", ["train", "test", "tte"])
def test_device_decode_matches_the_float_path_to_a_grey_level(shard, kind):
    """Same boxes, another decoder and resampler: within a grey level on average, a few at most."""

    def make(hand_off):
        if kind == "train":
            return train_input(hand_off, RES, MEAN, STD, EPOCHS)
        return eval_input(hand_off, RES, MEAN, STD, tte=kind == "tte", expand=4)

    as_float = torch.cat(batches(ShardIndex(shard, make("float"), seed=2), epoch=2))
    on_device = torch.cat(batches(ShardIndex(shard, make("encoded"), seed=2), epoch=2, workers=2))
    expected_shape = (len(SIZES) + 2, *((5,) if kind == "tte" else ()), 3, RES, RES)
    assert on_device.shape == as_float.shape == expected_shape
    difference = level_difference(on_device, as_float)
    assert difference.mean().item() < 1.0 and difference.max().item() <= 12, (
        difference.mean().item(),
        difference.max().item(),
    )


@pytest.mark.parametrize("res", [32, 224])
@pytest.mark.parametrize("tte, expand", [(False, None), (False, 24), (True, None), (True, 24), (True, 0)])
def test_every_hand_off_resizes_to_eval_resize(res, tte, expand):
    """One rule for the test-time short side (evaluate.tte_expand), in the workers or on the device;
    at 224 px with expand null the reference's 256 (centre crop) and 248 (TTE)."""
    short_side = eval_resize(res, tte, expand)
    for hand_off in ("float", "uint8"):
        steps = eval_input(hand_off, res, MEAN, STD, tte, expand).transform.transforms
        assert [step.size for step in steps if isinstance(step, T.Resize)] == [short_side], hand_off
    assert eval_input("encoded", res, MEAN, STD, tte, expand).short_side == short_side
    if res == 224 and expand is None:
        assert short_side == (248 if tte else 256)


def test_an_explicit_expand_moves_the_centre_crop_on_every_hand_off(shard):
    """``tte_expand`` with TTE off used to be ignored: the float path and the device's follow it alike."""
    wide = batches(ShardIndex(shard, eval_input("float", RES, MEAN, STD, expand=24), seed=2), epoch=0)
    plain = batches(ShardIndex(shard, eval_input("float", RES, MEAN, STD), seed=2), epoch=0)
    on_device = batches(ShardIndex(shard, eval_input("encoded", RES, MEAN, STD, expand=24), seed=2), epoch=0)
    assert (torch.cat(wide) - torch.cat(plain)).abs().max().item() > 0.1
    assert level_difference(torch.cat(on_device), torch.cat(wide)).mean().item() < 1.0


def test_encoded_batches_pin_and_collate(shard):
    dataset = ShardIndex(shard, train_input("encoded", RES, MEAN, STD, EPOCHS), seed=0)
    sampler = EpochBatchSampler(len(dataset), 4, shuffle=True)
    batch, labels = next(iter(make_loader(dataset, sampler, 0)))
    assert isinstance(batch, EncodedBatch) and len(batch) == 4 and labels.shape == (4,)
    assert batch.boxes.shape == (4, 4) and batch.flips.dtype == torch.bool
    assert all(p.dtype == torch.uint8 for p in batch.payloads)


def test_a_broken_jpeg_is_one_line_naming_the_shard_and_sample(tmp_path):
    good = encoded(photo(40, 40, 0), "JPEG")
    path = write_tar(
        tmp_path / "bad.tar", [sample("ok", 0, good, "jpg"), sample("cut", 1, b"\xff\xd8\xff\xe0junk", "jpg")]
    )
    dataset = ShardIndex([path], train_input("encoded", RES, MEAN, STD, EPOCHS), seed=0)
    dataset[(0, 0)]
    with pytest.raises(DataError, match=r"bad\.tar: sample cut does not decode") as info:
        dataset[(0, 1)]
    assert "\n" not in str(info.value)

    header_only = good[: len(good) // 2]  # a valid header, its data cut short: found when decoding
    path = write_tar(tmp_path / "cut.tar", [sample("half", 0, header_only, "jpg")])
    dataset = ShardIndex([path], train_input("encoded", RES, MEAN, STD, EPOCHS), seed=0)
    images, _ = EncodedInput.collate([dataset[(0, 0)]])
    with pytest.raises(DataError, match=r"a JPEG of this batch does not decode on cpu \(Image is incomplete") as info:
        finish_batch(dataset.transform, images, CPU)
    assert "\n" not in str(info.value)


def test_uint8_batches_finished_on_the_cpu_reuse_a_released_tensor():
    transform = train_input("uint8", RES, MEAN, STD, epochs=EPOCHS)
    crops = torch.randint(0, 256, (4, 3, RES, RES), dtype=torch.uint8)
    first = transform.finish_batch(crops, CPU)
    expected = first.clone()
    second = transform.finish_batch(crops.flip(0), CPU)
    assert first.data_ptr() != second.data_ptr()
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    pointer = first.data_ptr()
    del first
    third = transform.finish_batch(crops, CPU)
    assert third.data_ptr() == pointer
    torch.testing.assert_close(third, expected, rtol=0, atol=0)
