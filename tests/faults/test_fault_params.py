"""A typo in params.yaml, or a hostile one, stops every stage before it does any work, with one line
naming the key."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from faultkit import assert_nothing_left, assert_one_line_error, invoke, limit_memory, run_stage, write_params

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
        "shard": out / "shards",
        "validate": out / "stats",
        "init_head": out / "head" / "text_init.pt",
        "train": out / "model" / "adapter.pt",
        "evaluate": out / "metrics",
    }[stage]
    return ["--params", params, *inputs, "--out", output]


def assert_train_refuses(params: Path, tmp_path: Path, shards: Path, head: Path, *needles: str) -> None:
    """The train stage stops on ``params`` with one line holding every needle, and writes nothing."""
    out = tmp_path / "out"
    done = invoke("train", *stage_args("train", params, out, shards, head, None))
    assert_one_line_error(done, *needles)
    assert_nothing_left(out)


@pytest.mark.parametrize("stage", STAGES)
def test_unknown_param_key(stage, tmp_path, params_file, shards, head, checkpoint):
    params = write_params(tmp_path / "params.yaml", params_file, train={"lrr": 0.01})
    out = tmp_path / "out"
    done = invoke(stage, *stage_args(stage, params, out, shards, head, checkpoint))
    assert_one_line_error(done, f"{params}: unknown key 'train.lrr'")
    assert_nothing_left(out)


def test_wrong_param_type(tmp_path, params_file, shards, head):
    params = write_params(tmp_path / "params.yaml", params_file, train={"epochs": "five"})
    assert_train_refuses(params, tmp_path, shards, head, f"{params}: 'train.epochs' is 'five'", "integer")


def test_negative_learning_rate(tmp_path, params_file, shards, head):
    params = write_params(tmp_path / "params.yaml", params_file, train={"lr": -0.02})
    assert_train_refuses(params, tmp_path, shards, head, f"{params}: 'train.lr' is -0.02", "greater than 0")


def test_epochs_for_a_method_that_trains_nothing(tmp_path, params_file, shards, head):
    """Zero-shot has no trainable parameter: an explicit epoch count is a mistake, not an optimizer crash."""
    params = write_params(tmp_path / "params.yaml", params_file, train={"method": "zs", "epochs": 1})
    assert_train_refuses(
        params, tmp_path, shards, head, "'train.epochs' is 1, but train.method zs has nothing to train"
    )


@pytest.mark.parametrize(
    "section, key, written, shown",
    [
        ("train", "lr", ".inf", "inf"),
        ("model", "scale", "-.inf", "-inf"),
        ("data", "imbalance_ratio", ".nan", "nan"),
    ],
)
def test_non_finite_float_is_refused(section, key, written, shown, tmp_path, params_file, shards, head):
    """`train.lr: .inf` used to pass `gt=0`, train to NaN weights and exit 0."""
    params = write_params(tmp_path / "params.yaml", params_file, **{section: {key: float(shown)}})
    assert f"  {key}: {written}\n" in params.read_text()
    assert_train_refuses(
        params, tmp_path, shards, head, f"{params}: '{section}.{key}' is {shown}: input should be a finite number"
    )


def test_a_float_beyond_float32_is_refused(tmp_path, params_file, shards, head):
    """1e300 is a finite float, but torch's SGD raised 'value cannot be converted to type float' on it."""
    params = write_params(tmp_path / "params.yaml", params_file, train={"lr": 1e300})
    assert_train_refuses(params, tmp_path, shards, head, f"{params}: 'train.lr': 1e+300 is beyond the float32 range")


def test_params_that_are_not_utf8(tmp_path, params_file, shards):
    text = params_file.read_bytes()
    at = text.index(b"a photo of a {}.")
    params = tmp_path / "params.yaml"
    params.write_bytes(text[:at] + "é".encode("latin-1") + text[at:])
    out = tmp_path / "out"
    done = invoke("validate", *stage_args("validate", params, out, shards, None, None))
    assert_one_line_error(done, f"error: {params}: not UTF-8 text (byte 0xe9 at position {at})")
    assert_nothing_left(out)


def test_a_key_written_twice_is_refused(tmp_path, params_file, shards, head):
    """PyYAML keeps the last value silently (DVC refuses such a file): which lr did the user mean?"""
    lines = params_file.read_text().splitlines()
    train_line = lines.index("train:")
    lines[train_line + 1 : train_line + 1] = ["  lr: 0.5", "  lr: 0.01"]
    params = tmp_path / "params.yaml"
    params.write_text("\n".join(lines) + "\n")
    assert_train_refuses(
        params,
        tmp_path,
        shards,
        head,
        f"{params}: duplicate key 'train.lr' (line {train_line + 2} and line {train_line + 3})",
    )


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n\n", "null\n", "{}\n"])
def test_an_empty_params_file_is_refused(text, tmp_path, shards):
    """The built-in defaults are not what anybody wrote (and DVC would find none of the stages' params)."""
    params = tmp_path / "params.yaml"
    params.write_text(text)
    out = tmp_path / "out"
    done = invoke("validate", *stage_args("validate", params, out, shards, None, None))
    assert_one_line_error(
        done, f"{params}: empty; expected the sections data, validate, model, init_head, train, evaluate, register"
    )
    assert_nothing_left(out)


def billion_laughs(levels: int = 9) -> str:
    """``data.root`` as 9 levels of aliases, each 10 of the one before: 10**9 strings once expanded."""
    names = "abcdefghijklmnop"[:levels]
    lines = ["data:", "  root:", f"    - &{names[0]} [" + ", ".join(["lol"] * 10) + "]"]
    for previous, name in itertools.pairwise(names):
        lines.append(f"    - &{name} [" + ", ".join([f"*{previous}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def test_a_billion_laughs_params_file_fails_in_one_line_and_little_memory(tmp_path, shards, head):
    """The error message used to quote the bad value with repr(): 10**9 items, gigabytes, minutes."""
    params = tmp_path / "params.yaml"
    params.write_text(billion_laughs())
    out = tmp_path / "out"
    done = run_stage(
        "train", *stage_args("train", params, out, shards, head, None), timeout=60, preexec_fn=limit_memory()
    )
    line = assert_one_line_error(done, f"{params}: 'data.root' is [[", "input should be a valid string")
    assert len(line) < 200 + len(str(params)), line
    assert_nothing_left(out)
