"""A typo in params.yaml stops every stage before it does any work, with one line naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultkit import assert_nothing_left, assert_one_line_error, invoke, write_params

STAGES = ("shard", "validate", "init_head", "train", "evaluate")


def stage_args(stage: str, params: Path, out: Path, shards: Path, head: Path, checkpoint: Path) -> list:
    """The stage's command line with every output under ``out``."""
    inputs = {
        "shard": [],
        "validate": ["--shards", shards],
        "init_head": ["--shards", shards],
        "train": ["--shards", shards, "--head", head, "--state", out / "state" / "last.pt", "--live", out / "live"],
        "evaluate": ["--shards", shards, "--model", checkpoint],
    }[stage]
    output = {
        "shard": out / "shards", "validate": out / "stats", "init_head": out / "head" / "text_init.pt",
        "train": out / "model" / "adapter.pt", "evaluate": out / "metrics",
    }[stage]
    return ["--params", params, *inputs, "--out", output]


@pytest.mark.parametrize("stage", STAGES)
def test_unknown_param_key(stage, tmp_path, params_file, shards, head, checkpoint):
    params = write_params(tmp_path / "params.yaml", params_file, train={"lrr": 0.01})
    out = tmp_path / "out"
    done = invoke(stage, *stage_args(stage, params, out, shards, head, checkpoint))
    assert_one_line_error(done, f"{params}: unknown key 'train.lrr'")
    assert_nothing_left(out)


def test_wrong_param_type(tmp_path, params_file, shards, head):
    params = write_params(tmp_path / "params.yaml", params_file, train={"epochs": "five"})
    out = tmp_path / "out"
    done = invoke("train", *stage_args("train", params, out, shards, head, None))
    assert_one_line_error(done, f"{params}: 'train.epochs' is 'five'", "integer")
    assert_nothing_left(out)


def test_negative_learning_rate(tmp_path, params_file, shards, head):
    params = write_params(tmp_path / "params.yaml", params_file, train={"lr": -0.02})
    out = tmp_path / "out"
    done = invoke("train", *stage_args("train", params, out, shards, head, None))
    assert_one_line_error(done, f"{params}: 'train.lr' is -0.02", "greater than 0")
    assert_nothing_left(out)


def test_epochs_for_a_method_that_trains_nothing(tmp_path, params_file, shards, head):
    """Zero-shot has no trainable parameter: an explicit epoch count is a mistake, not an optimizer crash."""
    params = write_params(tmp_path / "params.yaml", params_file, train={"method": "zs", "epochs": 1})
    out = tmp_path / "out"
    done = invoke("train", *stage_args("train", params, out, shards, head, None))
    assert_one_line_error(done, "'train.epochs' is 1, but train.method zs has nothing to train")
    assert_nothing_left(out)
