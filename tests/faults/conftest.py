"""Shared tiny inputs for the fault tests: raw data, its shards, a head init and a checkpoint.

Built once per session and never modified: a test that corrupts something
copies it into its own tmp_path first.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faultkit import invoke, save_untrained_checkpoint, write_params
from pipeline_project import learnable_fashion_mnist

TRAIN_PER_CLASS = 24
"""With imbalance ratio 10: 24, 18, 14, 11, 8, 6, 4, 3, 2, 2 training images (92)."""
TEST_PER_CLASS = 4

SMALL = {
    "validate": {"sample_size": 32},
    "train": {"epochs": 1, "batch_size": 8, "micro_batch": 4, "workers": 0},
    "evaluate": {"batch_size": 64, "workers": 0},
}


@pytest.fixture(scope="session")
def fault_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="session")
def raw_fmnist(fault_root) -> Path:
    return learnable_fashion_mnist(fault_root / "raw", TRAIN_PER_CLASS, TEST_PER_CLASS)


@pytest.fixture(scope="session")
def params_file(fault_root, raw_fmnist) -> Path:
    """The repository's params.yaml on the tiny raw data, with tiny batches and one epoch."""
    return write_params(fault_root / "params.yaml", data={"root": str(raw_fmnist), "imbalance_ratio": 10}, **SMALL)


@pytest.fixture(scope="session")
def shards(fault_root, params_file) -> Path:
    out = fault_root / "shards"
    done = invoke("shard", "--params", params_file, "--out", out)
    assert done.code == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def classnames(shards) -> list[str]:
    return json.loads((shards / "manifest.json").read_text())["classnames"]


@pytest.fixture(scope="session")
def head(fault_root, params_file, shards) -> Path:
    out = fault_root / "head" / "text_init.pt"
    done = invoke("init_head", "--params", params_file, "--shards", shards, "--out", out)
    assert done.code == 0, done.stderr
    return out


@pytest.fixture(scope="session")
def checkpoint(fault_root, params_file, classnames) -> Path:
    return save_untrained_checkpoint(fault_root / "model" / "adapter.pt", params_file, classnames)
