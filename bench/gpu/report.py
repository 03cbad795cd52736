"""The GPU bench's result file: the arms' figures assembled into one flat object, and its summary."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from bench.gpu.settings import SMOKE_NOTE

REQUIRED = (
    "gpu_reference_images_per_second",
    "gpu_train_images_per_second",
    "gpu_model_only_images_per_second",
    "gpu_train_speedup",
    "gpu_loader_share",
    "gpu_eval_images_per_second",
    "gpu_eval_tte_images_per_second",
)
"""Figures every complete run has; a run missing one exits 1."""

ARM_KEYS = {
    "reference": "reference",
    "ours": "train",
    "model_only": "model_only",
    "ours_compiled": "train_compiled",
    "model_only_compiled": "model_only_compiled",
}
"""Training arm -> its figures' infix (``gpu_<infix>_images_per_second``)."""

RUN_INFO = (
    "torch_version",
    "torchvision_version",
    "open_clip_version",
    "python_version",
    "cuda_version",
    "gpu_memory_gib",
)


def assemble(
    plan: dict[str, Any], results: dict[str, dict], errors: dict[str, str], timings: dict[str, float]
) -> dict[str, Any]:
    """The result file's object: the run and machine, then each arm's figures and the ratios.

    ``plan`` is what the arms ran (sizes and batch counts), ``results`` each arm's report
    (``info``: the arm process's versions), ``timings`` photo_seconds, shard_seconds, seconds."""
    cuda = plan["device"] == "cuda"
    info = results.get("info", {})
    figures: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_smoke": not cuda,
        "gpu_name": info.get("gpu_name", "none (CPU smoke run)") if cuda else "none (CPU smoke run)",
    }
    if not cuda:
        figures["note"] = SMOKE_NOTE
    figures.update({key: info[key] for key in RUN_INFO if key in info})
    figures["device"] = plan["device"]
    figures["cpu_count"] = os.cpu_count()
    for key in ("model", "num_classes", "images", "batch", "eval_batch", "workers", "passes"):
        figures[key] = plan[key]
    for key in ("warmup_batches", "timed_batches", "eval_warmup_batches", "eval_timed_batches", "input", "resize"):
        figures[key] = plan[key]
    figures["hand_off"] = results.get("ours", {}).get("hand_off", "?")
    figures["peak_memory"] = "torch.cuda.max_memory_allocated" if cuda else "process peak resident memory (VmHWM)"

    for arm, key in ARM_KEYS.items():
        if arm in results:
            figures[f"gpu_{key}_images_per_second"] = results[arm]["rate"]
            figures[f"gpu_{key}_peak_memory_gib"] = results[arm]["peak_gib"]
            figures[f"gpu_{key}_seconds"] = results[arm]["seconds"]
    if "eval" in results:
        for name in ("eval", "eval_tte"):
            figures[f"gpu_{name}_images_per_second"] = results["eval"][f"{name}_rate"]
            figures[f"gpu_{name}_peak_memory_gib"] = results["eval"][f"{name}_peak_gib"]
        figures["gpu_eval_seconds"] = results["eval"]["seconds"]
    if "ours" in results and "reference" in results:
        figures["gpu_train_speedup"] = results["ours"]["rate"] / results["reference"]["rate"]
    if "ours" in results and "model_only" in results:
        figures["gpu_loader_share"] = results["ours"]["rate"] / results["model_only"]["rate"]
    if "ours_compiled" in results and "model_only_compiled" in results:
        figures["gpu_loader_share_compiled"] = results["ours_compiled"]["rate"] / results["model_only_compiled"]["rate"]
    for key in ("photo_seconds", "shard_seconds", "seconds"):
        figures[key] = timings[key]
    if errors:
        figures["errors"] = errors
    return figures


def write_results(out: Path, figures: dict[str, Any]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")


def print_table(figures: dict[str, Any]) -> None:
    header = "CPU smoke run (not GPU figures)" if figures["cpu_smoke"] else figures["gpu_name"]
    print(
        f"\n{header}: {figures['model']}, batch {figures['batch']}, {figures['workers']} workers, "
        f"torch {figures.get('torch_version', '?')}"
    )
    for key, value in figures.items():
        if key.startswith("gpu_") and isinstance(value, float):
            print(f"  {key:45s} {value:12.3f}")
    for arm, error in figures.get("errors", {}).items():
        print(f"  {arm}: {error}")


def missing_figures(figures: dict[str, Any]) -> list[str]:
    return [key for key in REQUIRED if key not in figures]
