"""Evaluation cost of test-time ensembling (five crops) against a single centre crop.

ViT-B-16 lift+ (random init, K = 1000), CPU fp32, ``predict_logits`` (the
evaluate stage's function) over the same few synthetic photo shards, batch 8,
2 workers: once with ``test_transform`` (short side 256, centre 224 crop) and
once with ``tte_transform`` (short side 248, five 224 crops, logits averaged):
the short sides are ``eval_resize``'s, the evaluate stage's with ``evaluate.tte_expand: null``.
One warm-up forward first; each pass is timed whole, worker start included,
as the evaluate stage runs it. Runs in a child process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import BenchContext, report, run_child, timed
from bench.photos import photo_folder, shard_photos

MODEL = "ViT-B-16"
NUM_CLASSES = 1000
BATCH = 8
WORKERS = 2

FIGURES = {
    "tte_cost_ratio": "ratio: evaluation seconds with TTE (5 crops) ÷ centre crop only",
    "eval_images_per_second": "predict_logits, ViT-B-16 lift+, 224 px centre crop, CPU fp32, batch 8, images/s",
    "eval_tte_images_per_second": "the same with TTE (five crops averaged), images/s",
    "eval_images": "images evaluated per pass",
}


def measure(shard_dir: Path) -> dict[str, float]:
    import torch

    from liftplus.data.loader import ShardIndex
    from liftplus.data.manifest import read_manifest, shard_paths
    from liftplus.data.transforms import test_transform, tte_transform
    from liftplus.evaluation.inference import predict_logits
    from liftplus.model import ModelConfig, build_model

    model = build_model(ModelConfig(name=MODEL, pretrained=None, peft="adaptformer", num_classes=NUM_CLASSES))
    pre = model.preprocess
    paths = shard_paths(read_manifest(shard_dir / "manifest.json"), shard_dir, "train")
    plain = ShardIndex(paths, test_transform(pre.image_size, pre.mean, pre.std))
    tte = ShardIndex(paths, tte_transform(pre.image_size, pre.mean, pre.std))
    cpu = torch.device("cpu")
    with torch.inference_mode():
        model.eval()(torch.zeros(BATCH, 3, pre.image_size, pre.image_size))

    def evaluate(dataset: ShardIndex):
        logits, _ = predict_logits(model, dataset, BATCH, WORKERS, cpu, progress=False)
        if tuple(logits.shape) != (len(dataset), NUM_CLASSES) or not torch.isfinite(logits).all():
            raise RuntimeError(f"unexpected logits {tuple(logits.shape)}")
        return logits

    plain_seconds, _ = timed(lambda: evaluate(plain))
    tte_seconds, _ = timed(lambda: evaluate(tte))
    n = len(plain)
    return {
        "tte_cost_ratio": tte_seconds / plain_seconds,
        "eval_images_per_second": n / plain_seconds,
        "eval_tte_images_per_second": n / tte_seconds,
        "eval_images": float(n),
    }


def run(ctx: BenchContext) -> dict[str, float]:
    count = 8 if ctx.quick else 16
    photos = photo_folder(ctx.workdir / f"eval-photos-{count}", count, seed=1)
    shard_dir = ctx.workdir / f"eval-shards-{count}"
    shard_photos(photos, shard_dir, 256)
    figures = run_child("bench.eval_tte", ["--shards", str(shard_dir)], timeout=900)
    ctx.log(
        f"{count} images: {figures['eval_images_per_second']:.2f} images/s, "
        f"TTE {figures['eval_tte_images_per_second']:.2f} images/s"
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.eval_tte")
    parser.add_argument("--shards", type=Path, required=True, help="a folder of liftplus shards (train split)")
    report(measure(parser.parse_args().shards))


if __name__ == "__main__":
    main()
