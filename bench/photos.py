"""Synthetic JPEG photos in an ImageFolder tree, sized and compressed like ImageNet's.

Each image is a smooth colour field (a coarse random grid upsampled bicubically),
a few soft blobs, and per-pixel noise, saved at JPEG quality 90: about the bytes
per pixel of a real photo, so decoding costs what it would on real data.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_SIZE = (500, 375)
"""(width, height): ImageNet's most common size."""
JPEG_QUALITY = 90
NOISE_STD = 12.0
PHOTO_COUNT = 640
QUICK_PHOTO_COUNT = 320
"""Photos per pass (20 and 10 batches of 32), shared by the data-path and shard benchmarks."""


def noise_bank(rng: np.random.Generator, size: tuple[int, int] = PHOTO_SIZE) -> np.ndarray:
    """Gaussian pixel noise twice the photo's size; each photo takes a random window of it."""
    width, height = size
    return rng.normal(0, NOISE_STD, size=(2 * height, 2 * width, 3)).astype(np.float32)


def synthetic_photo(rng: np.random.Generator, noise: np.ndarray, size: tuple[int, int] = PHOTO_SIZE) -> np.ndarray:
    width, height = size
    grid = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    for _ in range(4):
        cy, cx, radius = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(20, 90)
        blob = np.exp(-((ys - cy) ** 2) / (2 * radius**2)) * np.exp(-((xs - cx) ** 2) / (2 * radius**2))
        field += blob[..., None] * rng.uniform(-120, 120, size=3).astype(np.float32)
    top, left = rng.integers(0, height), rng.integers(0, width)
    field += noise[top : top + height, left : left + width]
    return np.clip(field, 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def photo_folder(root: Path, count: int, classes: int = 10, seed: int = 0) -> Path:
    """``root/class_XX/img_XXXXX.jpg``, ``count`` photos spread evenly over ``classes``; reused if complete."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{count} {classes} {seed}":
        return root
    rng = np.random.default_rng(seed)
    noise = noise_bank(rng)
    for index in range(count):
        folder = root / f"class_{index % classes:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img_{index:05d}.jpg").write_bytes(jpeg_bytes(synthetic_photo(rng, noise)))
    done.write_text(f"{count} {classes} {seed}")
    return root


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))
