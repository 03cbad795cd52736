"""The GPU bench's command line, sizes and batch counts (parent process)."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Optional

from bench.common import REPO
from bench.photos import PHOTO_CLASSES

RESULTS = REPO / "bench" / "results-gpu.json"
SMOKE_RESULTS = REPO / "bench" / "results-gpu-cpu-smoke.json"
SMOKE_NOTE = "no GPU: CPU smoke run with small sizes; the figures are not GPU figures"

MAX_SHORT_SIDE = 256
"""The project default (``data.max_short_side``)."""

GPU_DEFAULTS = dict(
    images=4000, batch=128, eval_batch=256, passes=3, warmup=10, model="ViT-B-16", num_classes=1000, budget=480.0
)
SMOKE_DEFAULTS = dict(
    images=16,
    batch=4,
    eval_batch=4,
    passes=1,
    warmup=1,
    workers=2,
    model="liftplus-tiny-vit",
    num_classes=1000,
    budget=300.0,
)
OPTIONAL_ARM_SECONDS = 150
"""An optional (compiled) arm starts only with at least this much of the budget left."""


def parse_args(argv: Optional[list[str]], description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, help="synthetic photos to write (GPU default 4000; smoke 16)")
    parser.add_argument("--batch", type=int, help="training batch (GPU default 128; smoke 4)")
    parser.add_argument(
        "--eval-batch", type=int, help="evaluation batch (GPU default 256, evaluate.batch_size's; smoke 4)"
    )
    parser.add_argument(
        "--workers", type=int, help="loader workers, every arm (GPU default min(15, CPUs - 1); smoke 2)"
    )
    parser.add_argument(
        "--passes", type=int, help="passes over the photos each arm times, at least (GPU default 3; smoke 1)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help="warm-up batches, at least (rounded up to whole rounds of the workers; GPU default 10)",
    )
    parser.add_argument("--model", help="open_clip model (GPU default ViT-B-16; smoke liftplus-tiny-vit)")
    parser.add_argument("--num-classes", type=int, help="classifier classes K (default 1000)")
    parser.add_argument(
        "--input",
        choices=("auto", "float", "uint8", "encoded"),
        default="auto",
        help="ours' and eval's hand-off (train.input / evaluate.input; default auto: uint8 on CUDA)",
    )
    parser.add_argument(
        "--resize",
        choices=("pil", "torch"),
        default="pil",
        help="ours' crop resizer (train.resize; torch: the uint8 kernel, about 2x cheaper a sample)",
    )
    parser.add_argument("--compile", action="store_true", help="also time ours and model_only under torch.compile")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run on the CPU with small sizes even if a GPU is there"
    )
    parser.add_argument("--budget", type=float, help="seconds the whole run may take (GPU default 480, smoke 300)")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"result file (default {RESULTS.relative_to(REPO)}; smoke {SMOKE_RESULTS.relative_to(REPO)})",
    )
    parser.add_argument("--workdir", type=Path, help="keep photos and shards here (and reuse them); default a temp dir")
    return parser.parse_args(argv)


def settings(args: argparse.Namespace, cuda: bool, cpu_count: Optional[int] = None) -> dict[str, Any]:
    """The run's sizes: the GPU or smoke defaults, overridden by the options given."""
    defaults = dict(GPU_DEFAULTS if cuda else SMOKE_DEFAULTS)
    if cuda:
        defaults["workers"] = max(1, min(15, (cpu_count or os.cpu_count() or 2) - 1))
    chosen = {
        key: getattr(args, key) if getattr(args, key, None) is not None else value for key, value in defaults.items()
    }
    for key in ("images", "batch", "eval_batch", "passes", "num_classes"):
        if chosen[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1")
    if chosen["workers"] < 0 or chosen["warmup"] < 0:
        raise SystemExit("--workers and --warmup must not be negative")
    if chosen["num_classes"] < PHOTO_CLASSES:
        raise SystemExit(f"--num-classes must be at least {PHOTO_CLASSES} (the photos' classes)")
    return chosen


def round_up(n: int, multiple: int) -> int:
    """``n`` rounded up to a whole, non-zero multiple of ``multiple`` (at least 1)."""
    multiple = max(1, multiple)
    return max(multiple, math.ceil(n / multiple) * multiple)


def plan_counts(s: dict[str, Any]) -> dict[str, int]:
    """Warm-up and timed batches per arm: at least ``warmup`` and ``passes`` passes, whole rounds of the workers."""
    w = max(1, s["workers"])
    return {
        "warmup_batches": round_up(max(s["warmup"], w), w),
        "timed_batches": round_up(math.ceil(s["passes"] * s["images"] / s["batch"]), w),
        "eval_warmup_batches": round_up(max(s["warmup"], w), w),
        "eval_timed_batches": round_up(math.ceil(s["passes"] * s["images"] / s["eval_batch"]), w),
    }
