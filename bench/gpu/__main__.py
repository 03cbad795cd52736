"""``python -m bench.gpu``: inputs, then the arms (each group in its own process), then the result file."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import bench.gpu
from bench.gpu.arms import ARMS, COMPILED_ARMS
from bench.gpu.inputs import write_inputs
from bench.gpu.report import assemble, missing_figures, print_table, write_results
from bench.gpu.runner import run_arms
from bench.gpu.settings import (
    OPTIONAL_ARM_SECONDS,
    RESULTS,
    SMOKE_NOTE,
    SMOKE_RESULTS,
    parse_args,
    plan_counts,
    settings,
)


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_groups(plan_path: Path, groups: list[list[str]], cuda: bool, deadline: float) -> tuple[dict, dict]:
    """Each group of arms in one fresh process, in order; (each arm's figures, each failed or skipped arm's why).

    On the GPU a compiled arm is skipped when under ``OPTIONAL_ARM_SECONDS`` of the budget is left."""
    results: dict[str, dict] = {}
    errors: dict[str, str] = {}
    for names in groups:
        left = deadline - time.perf_counter()
        if cuda and names[0] in COMPILED_ARMS and left < OPTIONAL_ARM_SECONDS:
            errors[names[0]] = f"skipped: {left:.0f} s of the budget left"
            print(f"{names[0]}: {errors[names[0]]}", flush=True)
            continue
        got, error = run_arms(plan_path, names, timeout=max(30.0, left))
        results.update(got)
        if error is not None:
            errors.update({name: error for name in names if name not in got})
            print(f"arms {','.join(names)}: {error}", file=sys.stderr, flush=True)
    return results, errors


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv, bench.gpu.__doc__.split("\n\n")[0])
    run_started = time.perf_counter()
    cuda = not args.cpu_smoke and cuda_available()
    if not cuda:
        print(SMOKE_NOTE + ("" if args.cpu_smoke else " (CUDA is not available)"), flush=True)
    s = settings(args, cuda)
    out = args.out or (RESULTS if cuda else SMOKE_RESULTS)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="liftplus-bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        inputs = write_inputs(workdir, s["images"], processes=s["workers"])
        counts = plan_counts(s)
        plan: dict[str, Any] = {
            **s,
            **counts,
            "device": "cuda" if cuda else "cpu",
            "input": args.input,
            "resize": args.resize,
            "photos": str(inputs.photos),
            "shards": inputs.shards,
            "class_counts": inputs.class_counts,
        }
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        print(
            f"{s['model']}, batch {s['batch']} (eval {s['eval_batch']}), {s['workers']} workers: "
            f"{counts['warmup_batches']} warm-up + {counts['timed_batches']} timed batches per training arm, "
            f"{counts['eval_warmup_batches']} + {counts['eval_timed_batches']} per evaluation pass",
            flush=True,
        )
        # On the GPU each arm gets its own process (its own CUDA context, allocator peak and
        # determinism settings, no workers left over); the smoke run shares one to save imports.
        arms = list(ARMS) + (list(COMPILED_ARMS) if args.compile else [])
        groups = [[name] for name in arms] if cuda else [arms]
        results, errors = run_groups(plan_path, groups, cuda, deadline=run_started + s["budget"])
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    timings = {
        "photo_seconds": inputs.photo_seconds,
        "shard_seconds": inputs.shard_seconds,
        "seconds": time.perf_counter() - run_started,
    }
    figures = assemble(plan, results, errors, timings)
    write_results(out, figures)
    print_table(figures)
    print(f"wrote {out}", flush=True)
    missing = missing_figures(figures)
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
