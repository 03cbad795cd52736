"""Shard write and read-back throughput: synthetic JPEG photos and the real Fashion-MNIST.

Write: ``open_source`` + ``shard_source`` into an empty folder, as the shard
stage does (photos decoded, resized to short side 256 and re-encoded on
liftplus's thread pool; Fashion-MNIST subsampled to IR 100 and PNG-encoded),
timed end to end, over every split.

Read: every sample of every split back through ``ShardIndex`` (index built
first, not timed) + ``make_loader`` with 2 workers, decoded to uint8 tensors
(no augmentation), batches of 64; samples/s after the first batch.
"""

from __future__ import annotations

from pathlib import Path

from bench.common import BenchContext, samples_per_second_after_first, timed
from bench.photos import PHOTO_COUNT, QUICK_PHOTO_COUNT, folder_bytes, photo_folder
from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
from liftplus.data.manifest import shard_paths
from liftplus.data.sharding import shard_source
from liftplus.data.sources import open_source
from liftplus.data.transforms import to_uint8_tensor
from liftplus.params import DataParams

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
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
    """Seconds to open the source and shard it into ``out_dir``; and the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def write() -> dict:
        source = open_source(data)
        return shard_source(source, data.source, out_dir, data.shard_max_samples, data.shard_max_bytes)

    return timed(write)


def read_rate(manifest: dict, shard_dir: Path) -> float:
    paths = [p for split in manifest["splits"] for p in shard_paths(manifest, shard_dir, split)]
    dataset = ShardIndex(paths, to_uint8_tensor)
    sampler = EpochBatchSampler(len(dataset), READ_BATCH, shuffle=False)
    rate, _ = samples_per_second_after_first(make_loader(dataset, sampler, READ_WORKERS), lambda b: len(b[1]))
    return rate


def total_samples(manifest: dict) -> int:
    return sum(split["num_samples"] for split in manifest["splits"].values())


def run(ctx: BenchContext) -> dict[str, float]:
    count = QUICK_PHOTO_COUNT if ctx.quick else PHOTO_COUNT
    photos = photo_folder(ctx.workdir / f"photos-{count}", count)
    out = ctx.workdir / "shard-throughput"

    data = DataParams(source="imagefolder", root=str(photos), max_short_side=256)
    seconds, manifest = write_shards(data, out / "photos")
    photo_samples = total_samples(manifest)
    shard_bytes = sum(s["bytes"] for split in manifest["splits"].values() for s in split["shards"])
    figures = {
        "shard_samples_per_second": photo_samples / seconds,
        "shard_read_samples_per_second": read_rate(manifest, out / "photos"),
        "shard_bytes_fraction": shard_bytes / folder_bytes(photos),
    }
    ctx.log(f"photos: {photo_samples} written in {seconds:.1f} s")

    if Path(FASHION_MNIST_ROOT).is_dir():
        data = DataParams(source="fashion-mnist", root=FASHION_MNIST_ROOT)
        seconds, manifest = write_shards(data, out / "fashion-mnist")
        samples = total_samples(manifest)
        ctx.log(f"fashion-mnist: {samples} written in {seconds:.1f} s")
        figures.update(
            {
                "fashion_mnist_shard_write_samples_per_second": samples / seconds,
                "fashion_mnist_shard_read_samples_per_second": read_rate(manifest, out / "fashion-mnist"),
                "fashion_mnist_shard_samples": float(samples),
            }
        )
    else:
        ctx.log(f"fashion-mnist: {FASHION_MNIST_ROOT} not found, skipped")
    return figures
