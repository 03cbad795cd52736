"""The GPU bench's inputs (parent process): synthetic photos written on a pool, and their shards."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench.gpu.settings import MAX_SHORT_SIDE
from bench.photos import photo_folder, shard_photos


@dataclass
class Inputs:
    photos: Path
    shards: list[str]
    """The train split's shard files."""
    class_counts: list[int]
    """Train images per class, from the manifest (the flat folder's test hold-out is not in them)."""
    photo_seconds: float
    shard_seconds: float


def write_inputs(workdir: Path, images: int, processes: int) -> Inputs:
    """``images`` photos under ``workdir`` (reused when complete) and their shards at short side 256."""
    from liftplus.data.manifest import read_manifest

    started = time.perf_counter()
    photos = photo_folder(workdir / f"photos-{images}", images, processes=max(1, processes))
    photo_seconds = time.perf_counter() - started
    print(f"photos: {images} synthetic 500x375 JPEGs in {photo_seconds:.1f} s", flush=True)

    started = time.perf_counter()
    shard_dir = workdir / f"shards-{images}-{MAX_SHORT_SIDE}"
    shards = shard_photos(photos, shard_dir, MAX_SHORT_SIDE)
    counts = read_manifest(shard_dir / "manifest.json")["splits"]["train"]["class_counts"]
    shard_seconds = time.perf_counter() - started
    print(f"shards: {len(shards)} shard(s), short side {MAX_SHORT_SIDE}, in {shard_seconds:.1f} s", flush=True)
    return Inputs(photos, [str(p) for p in shards], list(counts), photo_seconds, shard_seconds)
