"""Synthetic JPEG photos in an ImageFolder tree, sized and compressed like ImageNet's, and their shards.

Each image is a smooth colour field (a coarse random grid upsampled bicubically),
a few soft blobs, and per-pixel noise, saved at JPEG quality 90: about the bytes
per pixel of a real photo, so decoding costs what it would on real data.

One generator for every benchmark: photo ``i`` comes from its own
``numpy.random.default_rng([seed, i])`` (plus a noise bank drawn from ``seed``),
so the photos are the same whether one process writes them or a pool does
(the GPU bench writes thousands on a pool). The pool's workers import only
numpy and PIL; liftplus is imported by the sharding helpers alone.
"""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO_SIZE = (500, 375)
"""(width, height): ImageNet's most common size."""
JPEG_QUALITY = 90
NOISE_STD = 12.0
PHOTO_CLASSES = 10
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


def photo_path(root: Path, index: int, classes: int) -> Path:
    return root / f"class_{index % classes:02d}" / f"img_{index:05d}.jpg"


_NOISE: dict[int, np.ndarray] = {}
"""Noise bank per seed, in this process (each pool worker draws its own, the same)."""


def write_photo(job: tuple[str, int, int, int]) -> int:
    """Photo ``index`` of the tree at ``root``: (root, index, classes, seed) -> bytes written."""
    root, index, classes, seed = job
    if seed not in _NOISE:
        _NOISE[seed] = noise_bank(np.random.default_rng(seed))
    data = jpeg_bytes(synthetic_photo(np.random.default_rng([seed, index]), _NOISE[seed]))
    photo_path(Path(root), index, classes).write_bytes(data)
    return len(data)


def photo_folder(root: Path, count: int, classes: int = PHOTO_CLASSES, seed: int = 0, processes: int = 1) -> Path:
    """``root/class_XX/img_XXXXX.jpg``: ``count`` photos dealt round-robin over ``classes``
    (fewer folders when ``count < classes``); reused if complete. ``processes`` > 1 writes
    them on a pool (spawned: the caller may hold torch's threads)."""
    done = root / ".complete"
    stamp = f"{count} {classes} {seed}"
    if done.is_file() and done.read_text() == stamp:
        return root
    if count < 1 or classes < 1:
        raise ValueError(f"photo_folder {root}: count {count} and classes {classes} must be at least 1")
    for c in range(min(classes, count)):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), i, classes, seed) for i in range(count)]
    if processes <= 1:
        for job in jobs:
            write_photo(job)
    else:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for _ in pool.imap_unordered(write_photo, jobs, chunksize=max(1, count // (8 * processes))):
                pass
    done.write_text(stamp)
    return root


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.jpg"))


def photo_params(photos: Path, max_short_side: int, store: str = "encoded"):
    """``DataParams`` sharding the photo folder as the shard stage would, every photo kept
    (``imbalance_ratio: 1``): the bench measures rates per sample, not a long tail, and a
    long-tail rule would empty the tail classes of a few hundred photos."""
    from liftplus.params import DataParams

    return DataParams(
        source="imagefolder", root=str(photos), max_short_side=max_short_side, store=store, imbalance_ratio=1
    )


def write_photo_shards(photos: Path, out_dir: Path, max_short_side: int, store: str = "encoded") -> dict:
    """Shard the photo folder into ``out_dir`` (``open_source`` + ``shard_source``, as the shard
    stage does); the manifest. Not cached: the shard benchmark times this."""
    from liftplus.data.sharding import shard_source
    from liftplus.data.sources import open_source

    data = photo_params(photos, max_short_side, store)
    out_dir.mkdir(parents=True, exist_ok=True)
    return shard_source(
        open_source(data), data.source, out_dir, data.shard_max_samples, data.shard_max_bytes, data.store
    )


def shard_photos(photos: Path, out_dir: Path, max_short_side: int, store: str = "encoded") -> list[Path]:
    """The photo folder as liftplus shards (``data.source: imagefolder``), written once; the train shard paths.

    The flat folder gets the source's test hold-out, so the train shards hold 80 % of the
    photos an ImageFolder loader over the folder reads: compare rates per sample."""
    from liftplus.data.manifest import read_manifest, shard_paths

    if not (out_dir / "manifest.json").is_file():
        write_photo_shards(photos, out_dir, max_short_side, store)
    return shard_paths(read_manifest(out_dir / "manifest.json"), out_dir, "train")
