"""Two runs of one stage on the same outputs: the second stops at once, the first is unaffected.

``dvc repro`` refuses a second repro by itself; these are the stages run by hand
(or by two schedulers), which only the stage's own lock beside its output
stops. The first run is held still (see :mod:`stageproc`) while the second
starts, so the race does not depend on this machine's speed. Also here: a new
shard run removes what a killed run left, and only that.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from faultkit import assert_one_line_error, invoke, temp_leftovers, write_params
from stageproc import PausedStage, train_args

from liftplus.errors import OutputError
from liftplus.locks import lock_path, output_lock


def test_second_train_stage_on_the_same_outputs_is_refused(tmp_path, params_file, shards, head):
    first_params = write_params(tmp_path / "first.yaml", params_file, train={"epochs": 2})
    second_params = write_params(tmp_path / "second.yaml", params_file, train={"epochs": 1, "lr": 0.01})
    out = tmp_path / "out"
    adapter = out / "model" / "adapter.pt"
    first = PausedStage(
        "train",
        "liftplus.training.loop:fit",
        *train_args(first_params, shards, head, out),
        workdir=tmp_path,
        name="first",
    )
    second, first_code = first.meanwhile(lambda: invoke("train", *train_args(second_params, shards, head, out)))

    assert second.code == 1
    assert_one_line_error(
        second, f"error: {adapter}: another train stage is running (pid {first.proc.pid}); wait for it to finish"
    )
    assert first_code == 0, first.stderr[-3000:]
    checkpoint = torch.load(adapter, map_location="cpu", weights_only=True)
    assert checkpoint["extra"]["epochs"] == 2, "the weights must come from the first run's params"
    assert torch.load(out / "state" / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 2
    assert not lock_path(adapter).exists() and temp_leftovers(out) == []


@pytest.mark.parametrize("stage", ["shard", "evaluate"])
def test_second_shard_or_evaluate_stage_on_the_same_output_is_refused(tmp_path, params_file, shards, checkpoint, stage):
    """The first run is held in the middle of its work (a tar half-written; the test split predicted)."""
    out = tmp_path / "out" / stage
    args = {
        "shard": ("liftplus.data.shard_writer:_Shard.close", ["--params", params_file, "--out", out]),
        "evaluate": (
            "liftplus.evaluation.inference:predict_logits",
            ["--params", params_file, "--shards", shards, "--model", checkpoint, "--out", out],
        ),
    }
    target, stage_args = args[stage]
    first = PausedStage(stage, target, *stage_args, workdir=tmp_path, name="first")
    second, first_code = first.meanwhile(lambda: invoke(stage, *stage_args))

    assert_one_line_error(
        second, f"error: {out}: another {stage} stage is running (pid {first.proc.pid}); wait for it to finish"
    )
    assert first_code == 0, first.stderr[-3000:]
    assert not lock_path(out).exists() and temp_leftovers(out.parent) == []


def test_only_rank_zero_takes_the_lock(tmp_path, monkeypatch):
    """Under torchrun every rank runs the stage: ranks other than 0 must not wait for (or refuse) rank 0."""
    out = tmp_path / "model" / "adapter.pt"
    monkeypatch.delenv("RANK", raising=False)
    with output_lock(out, "train"):
        monkeypatch.setenv("RANK", "1")
        with output_lock(out, "train"):
            pass
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(OutputError, match="another train stage is running"), output_lock(out, "train"):
            pass
    assert not tmp_path.joinpath("model").exists(), "a lock leaves no folder it made"


def finished_pid() -> int:
    """The PID of a process that has ended (a killed run's)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_shard_run_removes_a_dead_runs_temporaries_only(tmp_path, params_file):
    """Folders of a run that was killed go; the folder of a run still going (this process) stays."""
    out = tmp_path / "data" / "shards"
    gone = finished_pid()
    stale = [out.parent / f".shards.tmp-{gone}-abcd1234", out.parent / f".shards.old-{gone}-abcd1234"]
    running = out.parent / f".shards.tmp-{os.getpid()}-abcd1234"
    for folder in (*stale, running):
        (folder / "shards").mkdir(parents=True)
        (folder / "shards" / "train-000000.tar").write_bytes(b"half a tar")

    done = invoke("shard", "--params", params_file, "--out", out)
    assert done.code == 0, done.stderr[-2000:]
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["shards", running.name])
    assert (running / "shards" / "train-000000.tar").read_bytes() == b"half a tar"
