"""Timing and peak memory inside an arm process."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

GIB = 1024**3


def log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak device memory (CUDA) or peak resident memory of this process (CPU), from ``reset()`` on."""

    def __init__(self, device):
        self.device = device

    def reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: reset the kernel's high-water mark of the resident set
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_gib(self) -> float:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        try:
            status = Path("/proc/self/status").read_text()
            kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        except (OSError, StopIteration, ValueError):
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib * 1024 / GIB


def timed_stream(batches: Iterator, step: Callable[[Any], int], warmup: int, timed: int, device) -> tuple[float, int]:
    """Run ``warmup`` steps, then time ``timed`` more; (images/s over the timed span, images timed)."""
    for _ in range(warmup):
        step(next(batches))
    sync(device)
    started = time.perf_counter()
    seen = 0
    for _ in range(timed):
        seen += step(next(batches))
    sync(device)
    return seen / (time.perf_counter() - started), seen
