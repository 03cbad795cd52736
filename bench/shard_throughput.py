"""Shard write and read-back throughput: synthetic JPEG photos and the real Fashion-MNIST.

Write: ``open_source`` + ``shard_source`` into an empty folder, as the shard
stage does (photos decoded, resized to short side 256 and re-encoded on
liftplus's thread pool, every photo kept: ``imbalance_ratio: 1``, the flat
folder's 20 % test hold-out as the test split; Fashion-MNIST subsampled to
IR 100 and PNG-encoded), timed end to end, over every split.

Read: every sample of every split back through ``ShardIndex`` (index built
first, not timed) + ``make_loader`` with 2 workers, decoded to uint8 tensors
(no augmentation), batches of 64; samples/s after the first batch.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.common import BenchContext, samples_per_second_after_first, timed
from bench.photos import PHOTO_COUNT, QUICK_PHOTO_COUNT, folder_bytes, photo_folder, photo_params
from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
from liftplus.data.manifest import shard_paths
from liftplus.data.sharding import shard_source
from liftplus.data.sources import open_source
from liftplus.data.transforms import to_uint8_tensor
from liftplus.params import DataParams

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_IMBALANCE_RATIO = 100
"""Fixed here, not the project default, so the figure's input stays the same (14,886 train images)."""
READ_BATCH = 64
READ_WORKERS = 2

FIGURES = {
    "shard_samples_per_second": "shard writing of 500x375 JPEG photos (decode, resize to 256, encode, tar), samples/s",
    "shard_read_samples_per_second": "those photo shards read back and decoded with 2 workers, samples/s",
    "shard_bytes_fraction": "ratio: photo shard bytes ÷ source JPEG bytes (pre-resizing to short side 256)",
    "fashion_mnist_shard_write_samples_per_second": "shard writing of Fashion-MNIST IR 100 (14,886 train + 10,000 test), samples/s",
    "fashion_mnist_shard_read_samples_per_second": "those shards read back and decoded with 2 workers, samples/s",
    "fashion_mnist_shard_samples": "samples in the Fashion-MNIST shards (all splits)",
}


def write_shards(data: DataParams, out_dir: Path) -> tuple[float, dict]:
    """Seconds to open the source and shard it into ``out_dir`` (emptied first); and the manifest."""
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)

    def write() -> dict:
        source = open_source(data)
        return shard_source(source, data.source, out_dir, data.shard_max_samples, data.shard_max_bytes, data.store)

    return timed(write)


def read_rate(manifest: dict, shard_dir: Path) -> float:
    paths = [p for split in manifest["splits"] for p in shard_paths(manifest, shard_dir, split)]
    dataset = ShardIndex(paths, to_uint8_tensor)
    sampler = EpochBatchSampler(len(dataset), READ_BATCH, shuffle=False)
    rate, _ = samples_per_second_after_first(make_loader(dataset, sampler, READ_WORKERS), lambda b: len(b[1]))
    return rate


def total_samples(manifest: dict) -> int:
    return sum(split["num_samples"] for split in manifest["splits"].values())


def photo_figures(ctx: BenchContext, count: int) -> dict[str, float]:
    """Write ``count`` synthetic photos' shards (every photo kept: ``imbalance_ratio: 1``) and read them back."""
    photos = photo_folder(ctx.workdir / f"photos-{count}", count)
    out = ctx.workdir / "shard-throughput" / "photos"
    seconds, manifest = write_shards(photo_params(photos, max_short_side=256), out)
    samples = total_samples(manifest)
    shard_bytes = sum(s["bytes"] for split in manifest["splits"].values() for s in split["shards"])
    ctx.log(f"photos: {samples} written in {seconds:.1f} s")
    return {
        "shard_samples_per_second": samples / seconds,
        "shard_read_samples_per_second": read_rate(manifest, out),
        "shard_bytes_fraction": shard_bytes / folder_bytes(photos),
    }


def fashion_mnist_figures(ctx: BenchContext, root: str = FASHION_MNIST_ROOT) -> dict[str, float]:
    data = DataParams(source="fashion-mnist", root=root, imbalance_ratio=FASHION_MNIST_IMBALANCE_RATIO)
    out = ctx.workdir / "shard-throughput" / "fashion-mnist"
    seconds, manifest = write_shards(data, out)
    samples = total_samples(manifest)
    ctx.log(f"fashion-mnist: {samples} written in {seconds:.1f} s")
    return {
        "fashion_mnist_shard_write_samples_per_second": samples / seconds,
        "fashion_mnist_shard_read_samples_per_second": read_rate(manifest, out),
        "fashion_mnist_shard_samples": float(samples),
    }


def run(ctx: BenchContext) -> dict[str, float]:
    figures = photo_figures(ctx, QUICK_PHOTO_COUNT if ctx.quick else PHOTO_COUNT)
    if Path(FASHION_MNIST_ROOT).is_dir():
        figures.update(fashion_mnist_figures(ctx))
    else:
        ctx.log(f"fashion-mnist: {FASHION_MNIST_ROOT} not found, skipped")
    return figures
