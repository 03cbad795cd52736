"""What every benchmark shares: the run context, child processes, timing helpers."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from liftplus import offline

REPO = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "


@dataclass
class BenchContext:
    quick: bool
    workdir: Path
    """A scratch folder for this run, removed afterwards; benchmarks may cache inputs in it."""
    deadline: float = float("inf")
    """``time.perf_counter()`` by which the whole run should be done; optional parts check it."""

    def seconds_left(self) -> float:
        return self.deadline - time.perf_counter()

    def log(self, message: str) -> None:
        print(f"  {message}", file=sys.stderr, flush=True)


def offline_env(**extra: str) -> dict[str, str]:
    """This process's environment, offline (liftplus.offline), quiet (no progress bars), with
    this interpreter's scripts first on PATH and the repository importable; then ``extra``."""
    env = offline.environment(TQDM_DISABLE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    ".dvc/config",
    ".dvcignore",
    "stages",
    "liftplus",
    "flows",
    "lists",
    "prefect.yaml",
)


def copy_project(dest: Path, edit_params: Callable[[str], str] | None = None, author: str = "liftplus bench") -> Path:
    """The project's pipeline as a fresh git repo at ``dest`` (one commit), ``params.yaml``'s
    text passed through ``edit_params``: `dvc repro`, `dvc exp run` and GTO tags run there
    never touch this checkout. Shared by the repro bench and the end-to-end tests."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    if edit_params is not None:
        params = dest / "params.yaml"
        params.write_text(edit_params(params.read_text()))
    (dest / ".gitignore").write_text("/data/\n/dvclive/\n/.prefect/\n__pycache__/\n")
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "config", "user.email", "project-copy@liftplus.invalid"],
        ["git", "config", "user.name", author],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "project copy"],
    ):
        result = subprocess.run(cmd, cwd=dest, env=offline_env(), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{dest}: {' '.join(cmd)} exited {result.returncode}: {result.stderr.strip()}")
    return dest


def run_child(module: str, args: Sequence[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``python -m module args`` in a fresh process (``env`` added to its environment);
    return the dict it reported with :func:`report`."""
    cmd = [sys.executable, "-m", module, *args]
    result = subprocess.run(
        cmd, cwd=REPO, env=offline_env(**(env or {})), capture_output=True, text=True, timeout=timeout
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if result.returncode != 0 or not lines:
        tail = (result.stderr or result.stdout)[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{tail}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def report(figures: dict[str, float]) -> None:
    """A child process's answer to :func:`run_child` (one line on stdout)."""
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``; a zero baseline is an error (results.json holds only finite numbers)."""
    if not denominator:
        raise ZeroDivisionError(f"ratio {numerator} / {denominator}: the baseline measured zero")
    return numerator / denominator


def samples_per_second_after_first(batches: Iterable, count: Callable[[object], int]) -> tuple[float, int]:
    """Samples/s over a whole pass, the clock started once the first batch is in (workers warm).

    Returns (samples per second, samples timed).
    """
    iterator = iter(batches)
    next(iterator)
    started = time.perf_counter()
    seen = sum(count(batch) for batch in iterator)
    elapsed = time.perf_counter() - started
    if not seen:
        raise ValueError("samples_per_second_after_first: a single batch, nothing left to time (use more samples)")
    return seen / elapsed, seen
