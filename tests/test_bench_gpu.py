"""The GPU benchmark's CPU smoke run: every arm runs, the result file says it is no GPU figure."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from bench.common import REPO, offline_env
from bench.gpu.report import REQUIRED
from bench.gpu.settings import SMOKE_NOTE

HEAVY = ("dvc", "dvclive", "prefect", "great_expectations", "gto", "sklearn")
"""What a GPU machine may lack, so the bench must not import (checked in its arm processes too)."""


@pytest.mark.slow
def test_cpu_smoke_run_writes_positive_figures_and_says_so(tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        "-X",
        "importtime",
        "-m",
        "bench.gpu",
        "--cpu-smoke",
        "--out",
        str(out),
        "--workdir",
        str(tmp_path / "work"),
    ]
    result = subprocess.run(cmd, cwd=REPO, env=offline_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert SMOKE_NOTE in result.stdout

    imported = {
        line.split("|")[2].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and line.count("|") == 2
    }
    assert "open_clip" in imported  # the arm process's imports are in the log too
    assert not imported & set(HEAVY)

    figures = json.loads(out.read_text())
    assert figures["cpu_smoke"] is True
    assert figures["note"] == SMOKE_NOTE and "not GPU figures" in figures["note"]
    assert "CPU smoke" in figures["gpu_name"]
    assert figures["device"] == "cpu"
    assert "errors" not in figures
    dt.datetime.fromisoformat(figures["date"])
    for key in ("torch_version", "workers", "batch", "images"):
        assert figures[key]
    for key in (
        *REQUIRED,
        "gpu_reference_peak_memory_gib",
        "gpu_train_peak_memory_gib",
        "gpu_model_only_peak_memory_gib",
        "gpu_eval_peak_memory_gib",
        "gpu_eval_tte_peak_memory_gib",
    ):
        assert isinstance(figures[key], float) and figures[key] > 0, key
    assert (
        figures["gpu_train_speedup"]
        == figures["gpu_train_images_per_second"] / figures["gpu_reference_images_per_second"]
    )
    assert (
        figures["gpu_loader_share"]
        == figures["gpu_train_images_per_second"] / figures["gpu_model_only_images_per_second"]
    )
    assert figures["timed_batches"] % figures["workers"] == 0
    committed = REPO / "bench" / "results-gpu.json"  # the GPU run's figures: never a smoke run's
    if committed.exists():
        assert json.loads(committed.read_text())["cpu_smoke"] is False
