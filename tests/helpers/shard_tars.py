"""Tiny WebDataset shards for the loader and training tests.

Each class has its own colour (plus per-image noise and a class-dependent
stripe), so the frozen random tiny ViT's features separate the classes and a
few SGD steps on the head are enough to learn something.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image
from webdataset import TarWriter

PALETTE = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40), (200, 60, 220), (40, 210, 210)]


def class_image(label: int, index: int, size: int = 36, mode: str = "RGB") -> bytes:
    """PNG bytes of a ``size`` x ``size`` image whose content depends on ``label`` (and noise on ``index``)."""
    rng = np.random.default_rng(1000 * label + index)
    colour = np.array(PALETTE[label % len(PALETTE)], dtype=np.float64)
    pixels = colour + rng.uniform(-30, 30, size=(size, size, 3))
    period = 3 + label % 4
    pixels[np.arange(size) % period == 0, :, :] *= 0.5
    array = np.clip(pixels, 0, 255).astype(np.uint8)
    img = Image.fromarray(array, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_image_folder(root: str | Path, classnames: Iterable[str], counts: dict[str, int]) -> Path:
    """``root/<split>/<class>/<n>.png`` for each split in ``counts`` (images per class): an imagefolder source."""
    root = Path(root)
    for split, count in counts.items():
        for label, name in enumerate(classnames):
            folder = root / split / name
            folder.mkdir(parents=True)
            for n in range(count):
                (folder / f"{n}.png").write_bytes(class_image(label, n))
    return root


def write_tar(path: str | Path, samples: Iterable[dict]) -> Path:
    """Write ``samples`` (webdataset dicts: ``__key__`` + extension → bytes) to one tar."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f, TarWriter(f, encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def sample(key: str, label: int | None, image: bytes | None, ext: str = "png") -> dict:
    out: dict = {"__key__": key}
    if image is not None:
        out[ext] = image
    if label is not None:
        out["cls"] = str(label).encode("ascii")
    return out


def write_shards(
    directory: str | Path,
    num_classes: int = 4,
    per_class: int = 12,
    per_shard: int = 20,
    size: int = 36,
    mode: str = "RGB",
    split: str = "train",
) -> list[Path]:
    """``num_classes * per_class`` labelled images, classes interleaved, ``per_shard`` to a tar.

    Returns the shard paths in order; sample ``n`` (0-based, over all shards)
    has key ``f"{split}{n:05d}"`` and label ``n % num_classes``.
    """
    directory = Path(directory)
    total = num_classes * per_class
    samples = [
        sample(f"{split}{n:05d}", n % num_classes, class_image(n % num_classes, n, size, mode)) for n in range(total)
    ]
    return [
        write_tar(directory / f"{split}-{i // per_shard:06d}.tar", samples[i : i + per_shard])
        for i in range(0, total, per_shard)
    ]
