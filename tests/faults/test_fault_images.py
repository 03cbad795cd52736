"""A user's own image folder with every awkward kind of image: shard → train/test transform → a tensor.

The per-image rules are unit-tested in tests/data/test_images.py; this is the
path a user's files take end to end. An image that does not decode fails the
shard stage by default, naming it, or is left out and counted with
``data.on_decode_error: skip``.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from faultkit import assert_nothing_left, assert_one_line_error, invoke, write_params
from PIL import Image

EXIF_ORIENTATION = 0x0112


def save(image: Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def odd_images(folder: Path) -> dict[str, tuple[int, int]]:
    """Write the awkward images; return the (width, height) each should be stored at."""
    rng = np.random.default_rng(0)
    noise = lambda h, w: rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)  # noqa: E731
    save(Image.fromarray(noise(40, 48)).convert("CMYK"), folder / "cmyk.jpg", quality=90)
    save(Image.fromarray(noise(40, 48)).convert("P", palette=Image.Palette.ADAPTIVE, colors=16), folder / "palette.png")
    wide = rng.integers(0, 65536, size=(40, 48), dtype=np.uint16)
    save(Image.fromarray(wide), folder / "sixteen-bit.png")
    rgba = np.dstack([noise(40, 48), rng.integers(0, 256, size=(40, 48), dtype=np.uint8)])
    save(Image.fromarray(rgba, "RGBA"), folder / "alpha.png")
    save(Image.fromarray(noise(5, 5)), folder / "tiny.png")
    save(Image.fromarray(noise(2000, 3000)), folder / "huge.jpg", quality=80)
    # stored 60 wide and 40 high, left half white; EXIF orientation 6: shown turned 90° clockwise,
    # 40 wide and 60 high, the white half on top
    sideways = np.zeros((40, 60, 3), np.uint8)
    sideways[:, :30] = 255
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    save(Image.fromarray(sideways), folder / "exif-rotated.jpg", exif=exif.tobytes(), quality=95)
    return {
        "cmyk.jpg": (48, 40),
        "palette.png": (48, 40),
        "sixteen-bit.png": (48, 40),
        "alpha.png": (48, 40),
        "tiny.png": (5, 5),
        "huge.jpg": (384, 256),
        "exif-rotated.jpg": (40, 60),
    }


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, dict]:
    root = tmp_path / "photos"
    sizes = odd_images(root / "train" / "odd")
    save(Image.fromarray(np.full((36, 36, 3), 90, np.uint8)), root / "train" / "plain" / "grey.png")
    for name in ("odd", "plain"):  # a test folder of its own: no hold-out taken from train
        save(Image.fromarray(np.full((36, 36, 3), 90, np.uint8)), root / "test" / name / "grey.png")
    return root, sizes


def shard_folder(tmp_path: Path, base: Path, root: Path, **data):
    params = write_params(
        tmp_path / "params.yaml", base, data={"source": "imagefolder", "root": str(root), "imbalance_ratio": 1, **data}
    )
    out = tmp_path / "out" / "shards"
    return invoke("shard", "--params", params, "--out", out), out


def stored_images(shards: Path) -> dict[str, Image.Image]:
    from liftplus.data.shard_reader import iter_shard

    manifest = json.loads((shards / "manifest.json").read_text())
    images = {}
    for shard in manifest["splits"]["train"]["shards"]:
        for _, _, data, _, meta in iter_shard(shards / shard["name"]):
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                images[Path(meta["source"]).name] = image.copy()
    return images


def test_odd_images_reach_the_model_as_tensors(tmp_path, params_file, image_folder):
    from liftplus.data import transforms
    from liftplus.data.loader import ShardIndex
    from liftplus.data.manifest import read_manifest, shard_paths
    from liftplus.model.backbone import TINY_MODEL, load_backbone

    root, sizes = image_folder
    done, shards = shard_folder(tmp_path, params_file, root)
    assert done.code == 0, done.stderr

    stored = stored_images(shards)
    assert {name: image.size for name, image in stored.items() if name in sizes} == sizes
    assert {image.mode for image in stored.values()} <= {"RGB", "L"}
    upright = np.asarray(stored["exif-rotated.jpg"].convert("L"), dtype=float)
    assert upright[:25].mean() > 200 and upright[35:].mean() < 50

    _, pre = load_backbone(TINY_MODEL)
    paths = shard_paths(read_manifest(shards), shards, "train")
    train = ShardIndex(paths, transforms.train_transform(pre.image_size, pre.mean, pre.std, epochs=5), num_classes=2)
    tte = ShardIndex(paths, transforms.tte_transform(pre.image_size, pre.mean, pre.std), num_classes=2)
    assert len(train) == len(sizes) + 1
    for i in range(len(train)):
        for epoch in (0, 4):
            image, label = train[(epoch, i)]
            assert image.shape == (3, pre.image_size, pre.image_size) and image.isfinite().all()
        crops, _ = tte[(0, i)]
        assert crops.shape == (5, 3, pre.image_size, pre.image_size)


def test_undecodable_image_fails_the_stage_by_default(tmp_path, params_file, image_folder):
    root, _ = image_folder
    broken = root / "train" / "plain" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    done, shards = shard_folder(tmp_path, params_file, root)
    assert_one_line_error(done, f"{broken}: cannot decode", "set data.on_decode_error: skip")
    assert_nothing_left(tmp_path / "out")


def test_undecodable_image_skipped_and_counted(tmp_path, params_file, image_folder):
    root, sizes = image_folder
    (root / "train" / "plain" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    done, shards = shard_folder(tmp_path, params_file, root, on_decode_error="skip")
    assert done.code == 0, done.stderr
    train = json.loads((shards / "manifest.json").read_text())["splits"]["train"]
    assert [s["source"] for s in train["skipped"]] == ["train/plain/broken.jpg"]
    assert train["skipped"][0]["error"].startswith("cannot decode")
    assert train["num_samples"] == len(sizes) + 1
    assert f"train: {len(sizes) + 1} samples in 1 shard(s), 2 classes present, 1 skipped" in done.stdout
