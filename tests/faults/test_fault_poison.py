"""Poisoned models and hostile files: NaN weights never reach evaluate, predict or the registry,
and a manifest with fields of the wrong type is one line, not a traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from faultkit import assert_nothing_left, assert_one_line_error, invoke, run_stage, write_params
from PIL import Image
from stageproc import train_args
from typer.testing import CliRunner

POISONED_KEY = "head.weight"


def poisoned_copy(checkpoint: Path, dest: Path, value: float = float("nan")) -> Path:
    """``checkpoint`` with one element of its head set to ``value`` (as a diverged training leaves it)."""
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["state"][POISONED_KEY][3, 5] = value
    torch.save(ckpt, dest)
    return dest


def train(params: Path, shards: Path, head: Path, out: Path):
    return invoke("train", *train_args(params, shards, head, out))


# --- training that diverges -------------------------------------------------------


def test_first_non_finite_names_the_first_poisoned_tensor():
    from liftplus.checkpoint_file import first_non_finite

    finite = {"a": torch.ones(3), "steps": torch.tensor([7, 8]), "scale": torch.tensor(2.5)}
    assert first_non_finite(finite) is None
    assert first_non_finite({}) is None
    inf_then_nan = {**finite, "b": torch.tensor([1.0, float("inf")]), "c": torch.tensor([float("nan")])}
    assert first_non_finite(inf_then_nan) == "b"
    assert first_non_finite({"c": torch.full((2, 2), float("-inf"), dtype=torch.float16)}) == "c"


def test_weights_made_infinite_by_the_last_step_fail_train_and_save_nothing(tmp_path, params_file, shards, head):
    """One optimizer step per epoch (batch 128 > 92 images): every loss is computed on the finite initial
    weights, and the single step (lr x weight decay x weight = 1e30 x 1e30 x ~0.1, all finite params)
    sends the weights to inf in float32. The run used to exit 0 and write that model."""
    params = write_params(
        tmp_path / "params.yaml",
        params_file,
        train={"lr": 1e30, "weight_decay": 1e30, "batch_size": 128, "micro_batch": 4, "epochs": 1},
    )
    out = tmp_path / "out"
    done = train(params, shards, head, out)
    assert_one_line_error(
        done, "train: weights are not finite after epoch 1 (first: ", "lower train.lr or check the data"
    )
    assert not (out / "model").exists()
    assert not (out / "state").exists()


# --- a checkpoint holding NaN -----------------------------------------------------


def test_evaluate_refuses_a_nan_checkpoint(tmp_path, params_file, shards, checkpoint):
    model = poisoned_copy(checkpoint, tmp_path / "adapter.pt")
    out = tmp_path / "out" / "metrics"
    done = invoke("evaluate", "--params", params_file, "--shards", shards, "--model", model, "--out", out)
    assert_one_line_error(done, f"{model}: tensor '{POISONED_KEY}' holds NaN or inf values")
    assert_nothing_left(tmp_path / "out")


def test_predict_refuses_an_infinite_checkpoint(tmp_path, checkpoint):
    from liftplus.cli import app

    model = poisoned_copy(checkpoint, tmp_path / "adapter.pt", float("inf"))
    Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / "x.png")
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "x.png"), "--model", str(model), "-o", str(out)])
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [f"error: {model}: tensor '{POISONED_KEY}' holds NaN or inf values"]
    assert not out.exists()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def project(tmp_path, params_file) -> Path:
    """A git repository with one commit, params whose register gate passes anything, finite metrics."""
    repo = tmp_path / "project"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    for key, value in (
        ("user.name", "liftplus tests"),
        ("user.email", "tests@liftplus.invalid"),
        ("tag.gpgsign", "false"),
    ):
        git(repo, "config", key, value)
    write_params(
        repo / "params.yaml",
        params_file,
        register={"min_accuracy": 0, "min_mean_class_accuracy": 0, "min_few_accuracy": None},
    )
    (repo / "eval.json").write_text(
        json.dumps(
            {
                "test": {"acc": 12.5, "acc_mean_class": 10.0, "acc_many": 20.0, "acc_medium": 5.0, "acc_few": 0.0},
                "tte": True,
            }
        )
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "project")
    return repo


def register(repo: Path, model: Path):
    return run_stage(
        "register",
        "--params",
        "params.yaml",
        "--metrics",
        "eval.json",
        "--model",
        model,
        "--out",
        "registration.json",
        cwd=repo,
    )


def test_register_refuses_a_nan_checkpoint(project, checkpoint):
    model = poisoned_copy(checkpoint, project / "adapter.pt")
    done = register(project, model)
    assert_one_line_error(done, f"{model}: tensor '{POISONED_KEY}' holds NaN or inf values")
    assert git(project, "tag", "--list") == ""
    assert not (project / "registration.json").exists()


def test_register_refuses_nan_in_any_metric_it_would_tag(project, checkpoint):
    """json.loads reads NaN; nested under an extra key, it used to pass the gate and land in the tag."""
    model = Path(shutil.copy(checkpoint, project / "adapter.pt"))
    metrics = json.loads((project / "eval.json").read_text())
    metrics["test"]["classes_few"] = float("nan")
    (project / "eval.json").write_text(json.dumps(metrics))
    assert "NaN" in (project / "eval.json").read_text()
    done = register(project, model)
    assert_one_line_error(done, "eval.json: 'test.classes_few' is nan, expected a finite number or null")
    assert git(project, "tag", "--list") == ""
    assert not (project / "registration.json").exists()


# --- manifest fields of the wrong type ----------------------------------------------


def edit_manifest(shards: Path, tmp_path: Path, edit) -> Path:
    copy = Path(shutil.copytree(shards, tmp_path / "shards"))
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def first_shard(manifest: dict) -> dict:
    return manifest["splits"]["train"]["shards"][0]


WRONG_TYPES = [
    pytest.param(
        lambda m: m.update(num_classes="10"), "'num_classes' is '10', expected an integer >= 0", id="num_classes-string"
    ),
    pytest.param(
        lambda m: m["splits"]["train"].update(num_samples="92"),
        "'splits.train.num_samples' is '92', expected an integer >= 0",
        id="num_samples-string",
    ),
    pytest.param(
        lambda m: first_shard(m).update(sha256=7),
        "'splits.train.shards[0].sha256' is 7, expected 64 lowercase hex digits",
        id="sha256-int",
    ),
    pytest.param(
        lambda m: first_shard(m).update(num_samples="3"),
        "'splits.train.shards[0].num_samples' is '3', expected an integer >= 0",
        id="shard-count-string",
    ),
    pytest.param(
        lambda m: first_shard(m).update(bytes=None),
        "'splits.train.shards[0].bytes' is None, expected an integer >= 0",
        id="bytes-null",
    ),
    pytest.param(
        lambda m: m["splits"]["train"].update(skipped="none"),
        "'splits.train.skipped' must be a list",
        id="skipped-string",
    ),
]


@pytest.mark.parametrize("edit, message", WRONG_TYPES)
def test_validate_names_a_manifest_field_of_the_wrong_type(tmp_path, params_file, shards, edit, message):
    copy = edit_manifest(shards, tmp_path, edit)
    out = tmp_path / "out" / "stats"
    done = invoke("validate", "--params", params_file, "--shards", copy, "--out", out)
    assert_one_line_error(done, f"{copy / 'manifest.json'}: {message}")
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("edit, message", [WRONG_TYPES[3], WRONG_TYPES[4]])
def test_train_names_a_manifest_field_of_the_wrong_type(tmp_path, params_file, shards, head, edit, message):
    copy = edit_manifest(shards, tmp_path, edit)
    done = train(params_file, copy, head, tmp_path / "out")
    assert_one_line_error(done, f"{copy / 'manifest.json'}: {message}")
    assert_nothing_left(tmp_path / "out")
