"""Arm processes: the parent starts one per group of arms; each reports its figures on stdout.

``python -m bench.gpu.runner --plan PLAN.json --arms a,b`` is the child's command
line (internal: :func:`run_arms` builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from bench.common import REPO, RESULT_PREFIX, offline_env, report


def device_info(device) -> dict[str, Any]:
    import open_clip
    import torch
    import torchvision

    from bench.gpu.measure import GIB

    info = {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "open_clip_version": getattr(open_clip, "__version__", "unknown"),
        "python_version": sys.version.split()[0],
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    return info


def arm_process(plan_path: Path, names: list[str]) -> None:
    """In an arm process: run ``names`` in order and report each one's figures on stdout."""
    from bench.gpu.arms import ARMS, COMPILED_ARMS, Arms
    from bench.gpu.measure import log

    unknown = [name for name in names if name not in ARMS + COMPILED_ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown arm {unknown[0]!r}; expected some of {', '.join(ARMS + COMPILED_ARMS)}")
    plan = json.loads(plan_path.read_text())
    arms = Arms(plan)
    report({"arm": "info", **device_info(arms.device)})
    for name in names:
        log(f"arm {name} ({plan['device']}) ...")
        report({"arm": name, **getattr(arms, name)()})


def run_arms(plan_path: Path, names: list[str], timeout: float) -> tuple[dict[str, dict], Optional[str]]:
    """``names`` in one fresh process; (each finished arm's figures, the error if it failed).

    The child's stderr (its log) passes straight through; other stdout lines are echoed to stderr."""
    cmd = [sys.executable]
    if "importtime" in sys._xoptions:
        cmd += ["-X", "importtime"]
    cmd += ["-m", "bench.gpu.runner", "--plan", str(plan_path), "--arms", ",".join(names)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=offline_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    error = None
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        error = f"timed out after {timeout:.0f} s"
    results: dict[str, dict] = {}
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            figures = json.loads(line[len(RESULT_PREFIX) :])
            results[figures.pop("arm")] = figures
        elif line.strip():
            print(line, file=sys.stderr)
    if error is None and proc.returncode != 0:
        error = f"exited {proc.returncode} (its traceback is above)"
    return results, error


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu.runner", description="one arm process (internal)")
    parser.add_argument("--plan", type=Path, required=True, help="the plan.json the parent wrote")
    parser.add_argument("--arms", required=True, help="comma-separated arms to run, in order")
    args = parser.parse_args(argv)
    arm_process(args.plan, [name for name in args.arms.split(",") if name])
    return 0


if __name__ == "__main__":
    sys.exit(main())
