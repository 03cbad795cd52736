"""``python -m bench [--quick] [--only NAME,...]``: run the benchmarks, write bench/results.{json,md}.

``results.json`` is one flat object of numbers. With ``--only`` the figures of
the benchmarks run replace theirs in an existing ``results.json`` and the rest
are kept. A benchmark that fails is reported and skipped; the exit status is 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.common import BenchContext, offline_env

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "results.md"

BENCHMARKS = {
    "data_path": "bench.data_path",
    "shard_throughput": "bench.shard_throughput",
    "checkpoint_size": "bench.checkpoint_size",
    "eval_tte": "bench.eval_tte",
    "repro_time": "bench.repro_time",
    "train_step": "bench.train_step",
}
"""In the order they run; train_step is last because its optional part (stock attention) runs only
if the time budget allows."""

RUN_FIGURES = {
    "bench_quick": "1 if this run used --quick (smaller inputs, fewer repeats)",
    "bench_cpu_count": "CPUs the run saw",
    "bench_load_average_before": "1-minute load average when the run started (other processes)",
    "bench_load_average_after": "1-minute load average when the run ended",
    "bench_seconds": "wall time of the whole run, s",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer repeats")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument(
        "--budget",
        type=float,
        default=600,
        help="seconds the whole run should take; optional parts are skipped past it (default 600)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="scratch folder to keep (and reuse generated inputs from); default: a temp dir",
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"--only: unknown benchmark {unknown[0]!r}; expected some of {', '.join(BENCHMARKS)}")
    args.names = [n for n in BENCHMARKS if n in names]
    return args


def format_value(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown_table(results: dict[str, float], descriptions: dict[str, str]) -> str:
    lines = [
        "# liftplus benchmark results",
        "",
        "One run on one machine; every ratio is measured in the same run as its baseline.",
        "See bench/README.md for how each figure is measured.",
        "",
        "| figure | value | what it is |",
        "|---|---:|---|",
    ]
    for name, value in results.items():
        lines.append(f"| `{name}` | {format_value(value)} | {descriptions.get(name, '')} |")
    return "\n".join(lines) + "\n"


def figure_descriptions() -> dict[str, str]:
    """One line per figure name, from each benchmark module's ``FIGURES``."""
    descriptions = dict(RUN_FIGURES)
    for name, module_name in BENCHMARKS.items():
        descriptions.update(importlib.import_module(module_name).FIGURES)
        descriptions[f"bench_{name}_seconds"] = f"wall time of the {name} benchmark, s"
    return descriptions


def load_previous() -> dict[str, float]:
    try:
        previous = json.loads(RESULTS_JSON.read_text())
    except (OSError, ValueError):
        return {}
    return previous if isinstance(previous, dict) else {}


def main(argv: list[str] | None = None) -> int:
    from liftplus.io import write_json, write_text

    args = parse_args(argv)
    os.environ.update(offline_env())
    started = time.perf_counter()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="liftplus-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = BenchContext(quick=args.quick, workdir=workdir, deadline=started + args.budget)

    results: dict[str, float] = {
        "bench_quick": float(args.quick),
        "bench_cpu_count": float(os.cpu_count() or 0),
        "bench_load_average_before": os.getloadavg()[0],
    }
    failed = []
    try:
        for name in args.names:
            module = importlib.import_module(BENCHMARKS[name])
            print(f"[{name}]", file=sys.stderr, flush=True)
            bench_started = time.perf_counter()
            try:
                figures = module.run(ctx)
            except Exception:
                traceback.print_exc()
                failed.append(name)
                continue
            seconds = time.perf_counter() - bench_started
            figures[f"bench_{name}_seconds"] = seconds
            results.update({k: float(v) for k, v in figures.items()})
            print(f"[{name}] done in {seconds:.0f} s", file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    results["bench_load_average_after"] = os.getloadavg()[0]
    results["bench_seconds"] = time.perf_counter() - started

    merged = load_previous() if args.only else {}
    merged.update(results)
    table = markdown_table(merged, figure_descriptions())
    write_json(RESULTS_JSON, merged)
    write_text(RESULTS_MD, table)
    print(table)
    if failed:
        print(f"error: benchmark(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
