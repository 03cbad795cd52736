"""Parsing DVC's output: which failures are worth a retry, what each stage did."""

from __future__ import annotations

import pytest

from flows.dvc_tasks import (
    classify_failure,
    experiment_names,
    flatten_metrics,
    format_override,
    stage_outcomes,
)

VALIDATION_FAILURE = """\
Running stage 'validate':
> python -m stages.validate
error: validate: split 'train' has 3 classes, manifest says 10
ERROR: failed to reproduce 'validate': failed to run: python -m stages.validate, exited with 1
"""


def test_stage_error_line_is_permanent_and_kept_whole():
    failure = classify_failure(1, VALIDATION_FAILURE, "dvc repro validate")
    assert not failure.transient
    assert str(failure) == "error: validate: split 'train' has 3 classes, manifest says 10"


@pytest.mark.parametrize(
    "output",
    [
        "Running stage 'train':\nERROR: failed to reproduce 'train': failed to run: python t.py, exited with -9",
        "Running stage 'train':\nERROR: failed to reproduce 'train': failed to run: python t.py, exited with 137",
        "ERROR: Unable to acquire lock. Most likely another DVC process is running or was terminated abruptly.",
        "Running stage 'shard':\nerror: OSError: [Errno 5] Input/output error: 'data/raw/x.png'\n"
        "ERROR: failed to reproduce 'shard': failed to run: python -m stages.shard, exited with 1",
        "Running stage 'train':\nTraceback (most recent call last):\nRuntimeError: CUDA error: unknown\n"
        "ERROR: failed to reproduce 'train': failed to run: python -m stages.train, exited with 1",
    ],
    ids=["signal", "shell-signal", "lock", "io-error", "crash-without-error-line"],
)
def test_transient_failures_are_retried(output):
    assert classify_failure(1, output, "dvc repro").transient


def test_dvc_killed_itself_is_transient():
    assert classify_failure(-15, "Running stage 'train':", "dvc repro train").transient


def test_dvc_refusing_the_pipeline_is_permanent():
    output = "ERROR: failed to reproduce 'train': missing data 'source': data/shards/manifest.json"
    failure = classify_failure(1, output, "dvc repro train")
    assert not failure.transient
    assert "missing data" in str(failure)


def test_stage_outcomes_from_repro_output():
    output = """\
Stage 'shard' didn't change, skipping
Running stage 'train':
> python t.py
Stage 'evaluate' is cached - skipping run, checking out outputs
Updating lock file 'dvc.lock'
"""
    assert stage_outcomes(output) == {
        "shard": "up to date",
        "train": "ran",
        "evaluate": "restored from run cache",
    }


def test_experiment_names_from_queue_and_run_output():
    output = (
        "Queueing with overrides '{...}'.\nQueued experiment 'blame-hose' for future execution.\n"
        "Reproducing experiment 'potty-halm'\nReproducing experiment 'potty-halm'\n"
    )
    assert experiment_names(output) == ["blame-hose", "potty-halm"]


def test_flatten_metrics_keeps_nulls_and_nests_with_dots():
    flat = flatten_metrics({"eval.json": {"data": {"accuracy": 70.0, "groups": {"few": None}}}})
    assert flat == {"eval.json:accuracy": 70.0, "eval.json:groups.few": None}


@pytest.mark.parametrize(
    "value, expected",
    [
        (0.02, "train.lr=0.02"),
        (5, "train.lr=5"),
        (True, "train.lr=true"),
        (None, "train.lr=null"),
        ("la", "train.lr=la"),
        ("a photo of a {}.", 'train.lr="a photo of a {}."'),
    ],
)
def test_overrides_are_written_so_dvc_reads_them_back(value, expected):
    assert format_override("train.lr", value) == expected
