"""End-to-end ``dvc repro`` of the embedded default, then a no-op ``dvc repro``.

The project (dvc.yaml, params.yaml, .dvc/config, stages, liftplus, flows) is
copied into a fresh git repository in the scratch folder, params untouched:
Fashion-MNIST from its Debian package at params.yaml's imbalance ratio (1000:
11,188 train + 10,000 test), the tiny random-init ViT, 5 epochs, TTE evaluation. ``dvc repro`` runs every
stage from an empty DVC cache (wall time, and the CPU time of all the processes
it ran); per-stage times come from when DVC announces each stage. The second
``dvc repro`` changes nothing and must skip every stage: its wall time is what
checking hashes, params and the lock file costs.

With ``--quick`` the full demo is skipped: the same pipeline runs on a small
copy of Fashion-MNIST (the first 2,000 train and 500 test images) at
``data.imbalance_ratio: 100`` (set in the copy's params.yaml: the project's 1000
would leave the last three classes of 2,000 images empty), and only
``quick_demo_repro_seconds``, ``noop_repro_seconds`` and ``flow_noop_seconds`` are reported.

``flow_noop_seconds`` is the same no-op through ``python -m flows.pipeline`` with no
Prefect server configured: one ``dvc status``, then (nothing stale) no flow run is
started, which the command must say; timed on its second run.
"""

from __future__ import annotations

import gzip
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.common import BenchContext, copy_project, offline_env

FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")
QUICK_SUBSET = {"train": 2000, "t10k": 500}
QUICK_IMBALANCE_RATIO = 100
"""--quick's data.imbalance_ratio: 200 to 2 train images a class on the subset (the project's
1000 keeps none of the last three classes of 2,000 images, and the validate stage refuses that)."""
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")
TIMEOUT = 3600
FLOW_NOOP_LINE = "every stage is up to date (dvc status); no flow run started"
"""What ``python -m flows.pipeline`` prints when, with no Prefect server configured, nothing is stale."""

FIGURES = {
    "demo_repro_seconds": "`dvc repro` of the embedded default (Fashion-MNIST at params.yaml's IR, tiny ViT, 5 epochs), all stages, s",
    "demo_repro_cpu_seconds": "CPU time (user + system) of every process that demo run started, s",
    "noop_repro_seconds": "a second `dvc repro` with nothing changed (every stage skipped), s",
    "flow_noop_seconds": "`python -m flows.pipeline` with nothing changed, no Prefect server (no flow run started), s",
    "quick_demo_repro_seconds": "--quick: `dvc repro` on a 2,000 + 500 image Fashion-MNIST subset at IR 100, s",
    **{
        f"demo_stage_{stage}_seconds": f"the demo's `{stage}` stage, timed from DVC's announcements, s"
        for stage in ("shard", "validate", "init_head", "train", "evaluate", "register")
    },
}


def set_data_params(**values: object):
    """A ``copy_project`` params edit setting keys of the ``data:`` section, keeping the
    file's comments (each key must already be there, as ``key: value`` on its own line)."""

    def edit(text: str) -> str:
        section = re.search(r"(?ms)^data:\n(.*?)(?=^\S|\Z)", text)
        if section is None:
            raise RuntimeError("params.yaml: no data: section")
        body = section.group(1)
        for key, value in values.items():
            body, n = re.subn(rf"(?m)^(  {key}:[ \t]*)[^\s#]+", rf"\g<1>{value}", body, count=1)
            if n != 1:
                raise RuntimeError(f"params.yaml: no data.{key} line to set")
        return text[: section.start(1)] + body + text[section.end(1) :]

    return edit


def quick_project(root: Path) -> Path:
    """The --quick copy: data.root the Fashion-MNIST subset, data.imbalance_ratio
    :data:`QUICK_IMBALANCE_RATIO` (the project's ratio would leave its tail classes empty)."""
    subset = fashion_mnist_subset(root / "fashion-mnist-subset")
    edit = set_data_params(root=subset, imbalance_ratio=QUICK_IMBALANCE_RATIO)
    return copy_project(root / "project", edit)


def fashion_mnist_subset(dest: Path) -> Path:
    """The first images of each Fashion-MNIST split, in its idx layout (for --quick)."""
    dest.mkdir(parents=True, exist_ok=True)
    for prefix, count in QUICK_SUBSET.items():
        for kind, ndim in (("images", 3), ("labels", 1)):
            name = f"{prefix}-{kind}-idx{ndim}-ubyte.gz"
            with gzip.open(FASHION_MNIST_ROOT / name, "rb") as f:
                content = f.read()
            header = 4 + 4 * ndim
            dims = [int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
            item = 1
            for d in dims[1:]:
                item *= d
            new_header = content[:4] + count.to_bytes(4, "big") + content[8:header]
            body = content[header : header + count * item]
            (dest / name).write_bytes(gzip.compress(new_header + body, mtime=0))
    return dest


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def dvc_repro(project: Path, log: Path) -> tuple[float, float, dict[str, float], str]:
    """Run ``dvc repro``: wall seconds, CPU seconds, seconds per stage run, and its stdout.

    A stage's time runs from DVC's "Running stage" line to the next one (or the end).
    """
    cpu_before = _children_cpu_seconds()
    started = time.perf_counter()
    stage_starts: list[tuple[str, float]] = []
    lines = []
    with open(log, "w") as err:
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=project,
            env=offline_env(),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,
        )
        watchdog = threading.Timer(TIMEOUT, os.killpg, (proc.pid, signal.SIGTERM))
        watchdog.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                match = STAGE_LINE.match(line)
                if match:
                    stage_starts.append((match.group(1), time.perf_counter()))
            proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            raise
        finally:
            watchdog.cancel()
    ended = time.perf_counter()
    output = "".join(lines)
    if proc.returncode != 0:
        why = f"was stopped after {TIMEOUT} s" if ended - started >= TIMEOUT else f"exited {proc.returncode}"
        raise RuntimeError(f"dvc repro in {project} {why}:\n{output[-1500:]}\n{log.read_text()[-1500:]}")
    stages = {}
    for i, (name, start) in enumerate(stage_starts):
        end = stage_starts[i + 1][1] if i + 1 < len(stage_starts) else ended
        stages[name] = end - start
    return ended - started, _children_cpu_seconds() - cpu_before, stages, output


def flow_noop(project: Path, prefect_home: Path) -> float:
    """Wall seconds of a no-op ``python -m flows.pipeline`` in ``project`` (after one warm-up run);
    an error unless it said that it started no flow run."""
    env = offline_env(PREFECT_HOME=str(prefect_home), PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    env.pop("PREFECT_API_URL", None)
    command = [sys.executable, "-m", "flows.pipeline"]
    seconds = 0.0
    for _ in range(2):
        started = time.perf_counter()
        result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        seconds = time.perf_counter() - started
        if result.returncode != 0 or FLOW_NOOP_LINE not in result.stdout:
            raise RuntimeError(
                f"no-op flow in {project} exited {result.returncode} without saying {FLOW_NOOP_LINE!r}:\n"
                f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}"
            )
    return seconds


def run(ctx: BenchContext) -> dict[str, float]:
    root = ctx.workdir / "repro"
    shutil.rmtree(root, ignore_errors=True)
    project = quick_project(root) if ctx.quick else copy_project(root / "project")

    seconds, cpu_seconds, stages, _ = dvc_repro(project, root / "repro.log")
    ctx.log(f"dvc repro: {seconds:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in stages.items())})")
    noop_seconds, _, noop_stages, output = dvc_repro(project, root / "noop.log")
    if noop_stages:
        raise RuntimeError(f"the second dvc repro ran stage(s) {', '.join(noop_stages)}:\n{output[-1500:]}")
    ctx.log(f"no-op dvc repro: {noop_seconds:.1f} s")
    flow_seconds = flow_noop(project, root / "prefect-home")
    ctx.log(f"no-op python -m flows.pipeline: {flow_seconds:.1f} s")

    if ctx.quick:
        return {
            "quick_demo_repro_seconds": seconds,
            "noop_repro_seconds": noop_seconds,
            "flow_noop_seconds": flow_seconds,
        }
    figures = {
        "demo_repro_seconds": seconds,
        "demo_repro_cpu_seconds": cpu_seconds,
        "noop_repro_seconds": noop_seconds,
        "flow_noop_seconds": flow_seconds,
    }
    figures.update({f"demo_stage_{name}_seconds": stage_seconds for name, stage_seconds in stages.items()})
    return figures
