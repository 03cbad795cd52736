"""A throw-away copy of this project, with tiny learnable raw data, for end-to-end runs.

The copy is its own git + DVC repo, so `dvc repro`, `dvc exp run` and GTO tags
in a test never touch the developer's checkout.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
from pathlib import Path

import numpy as np
import yaml

from bench.common import copy_project, offline_env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=offline_env(**env), capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes(), mtime=0))


def learnable_fashion_mnist(root: Path, train_per_class: int = 60, test_per_class: int = 10, seed: int = 0) -> Path:
    """Idx files in Fashion-MNIST's layout whose images show their class as a bright band."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 60, size=(len(labels), 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 5 + 2 * label, :] = 230
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def make_project(dest: Path, raw_root: Path, **overrides: dict) -> Path:
    """Copy the project into ``dest`` (git initialised, one commit) with small-run params, ``overrides`` on top."""

    def small_run(text: str) -> str:
        params = yaml.safe_load(text)
        params["data"].update(root=str(raw_root), imbalance_ratio=10)
        params["validate"].update(sample_size=64)
        params["train"].update(batch_size=32, micro_batch=16, workers=0)
        params["evaluate"].update(batch_size=64, workers=0)
        for section, values in overrides.items():
            params[section].update(values)
        return yaml.safe_dump(params, sort_keys=False)

    return copy_project(dest, small_run, author="liftplus test")
