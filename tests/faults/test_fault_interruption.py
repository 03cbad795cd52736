"""A crash, a kill or Ctrl-C in the middle of training costs the epoch in progress, not the run.

Two copies of the project share everything up to the head init (the session's
shards, stats and head, recorded with ``dvc commit``; then the folder is
copied). Copy B trains uninterrupted; copy A is killed with SIGKILL in the
middle of its second epoch and reproduced again: it must resume from the
epoch-1 state and end with the same ``eval.json``, byte for byte. The same
shards and head also serve direct runs of the train stage stopped by SIGTERM
and SIGINT, and a run with worker processes (determinism across worker counts).
The shard stage, killed or stopped half-way through a tar, leaves nothing for
good: its temporary folder goes at once on SIGTERM/SIGINT, and on the next run
after a SIGKILL.

Every stage process imports torch, torchvision and open_clip (about 10 s of CPU
here), so what is not about a separate process (resuming to the end, the
worker-count run) runs in this process.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from faultkit import assert_nothing_left, assert_one_line_error, invoke, temp_leftovers, tree, write_params
from pipeline_project import make_project, run
from stageproc import Background, PausedStage

pytestmark = pytest.mark.slow

EPOCHS = 3
PROJECT = {
    "validate": {"sample_size": 32},
    # 92 training images in micro-batches of 2: 46 forward/backward passes per epoch
    "train": {"epochs": EPOCHS, "batch_size": 4, "micro_batch": 2, "workers": 0},
    "evaluate": {"batch_size": 64, "workers": 0},
}
STATE = Path("data/train_state/last.pt")
LOCK_MESSAGES = ("is busy, it is being blocked by", "Unable to acquire lock")
"""DVC's per-path lock (a stage's deps and outs), or its whole-repo lock."""


def saved_epoch(path: Path) -> int | None:
    """The number of epochs a training state records as done, or None when there is none yet."""
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["epoch"]


def train_command(params: Path, project: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "stages.train",
        "--params",
        str(params),
        "--shards",
        str(project / "data/shards"),
        "--head",
        str(project / "data/head/text_init.pt"),
        "--out",
        str(out / "adapter.pt"),
        "--state",
        str(out / "last.pt"),
        "--live",
        str(out / "live"),
    ]


def same_weights(a: Path, b: Path) -> bool:
    ours, theirs = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    return ours["state"].keys() == theirs["state"].keys() and all(
        torch.equal(ours["state"][k], theirs["state"][k]) for k in ours["state"]
    )


@pytest.fixture(scope="module")
def copies(tmp_path_factory, raw_fmnist, shards, head):
    base = tmp_path_factory.mktemp("interruption")
    a = make_project(base / "a", raw_fmnist, **PROJECT)
    shutil.copytree(shards, a / "data/shards")
    (a / "data/head").mkdir()
    shutil.copy(head, a / "data/head/text_init.pt")
    done = invoke("validate", "--params", a / "params.yaml", "--shards", a / "data/shards", "--out", a / "data/stats")
    assert done.code == 0, done.stderr
    run(["dvc", "commit", "--force", "--with-deps", "init_head"], a)
    assert "up to date" in run(["dvc", "status", "init_head"], a).stdout
    b = Path(shutil.copytree(a, base / "b", symlinks=True))
    return a, b, base / "logs"


@pytest.fixture(scope="module")
def pipeline_runs(copies):
    """B: one uninterrupted ``dvc repro``, with a second repro started while it trains.
    A, at the same time: ``dvc repro train`` killed mid-epoch 2, then ``dvc repro evaluate``."""
    a, b, logs = copies
    first = Background(["dvc", "repro", "evaluate"], b, logs, "b-repro")
    killed = Background(["dvc", "repro", "train"], a, logs, "a-killed")
    try:
        killed.until(lambda: (a / STATE).is_file(), what="A's first epoch")
        time.sleep(0.1)
        os.killpg(killed.proc.pid, signal.SIGKILL)
        killed_code = killed.wait()
        state_after_kill = saved_epoch(a / STATE)
        leftovers = temp_leftovers(a / "data")
        adapter_after_kill = (a / "data/model/adapter.pt").exists()

        first.until(lambda: (b / STATE).is_file(), what="B's first epoch")
        second = run(["dvc", "repro", "evaluate"], b, check=False, OMP_NUM_THREADS="1")
        b_running_during_second = first.proc.poll() is None

        resumed = run(["dvc", "repro", "evaluate"], a, check=False, OMP_NUM_THREADS="1")
        first_code = first.wait()
        yield {
            "a": a,
            "b": b,
            "first": first,
            "first_code": first_code,
            "second": second,
            "b_running_during_second": b_running_during_second,
            "killed_code": killed_code,
            "state_after_kill": state_after_kill,
            "leftovers_after_kill": leftovers,
            "adapter_after_kill": adapter_after_kill,
            "resumed": resumed,
        }
    finally:
        for background in (first, killed):
            if background.proc.poll() is None:
                os.killpg(background.proc.pid, signal.SIGKILL)
                background.wait()


def test_second_repro_while_one_runs_is_refused(pipeline_runs):
    second, first = pipeline_runs["second"], pipeline_runs["first"]
    assert pipeline_runs["b_running_during_second"]
    assert second.returncode != 0
    told = second.stderr + second.stdout
    assert any(message in told for message in LOCK_MESSAGES), told
    assert "Running stage" not in second.stdout
    assert pipeline_runs["first_code"] == 0, first.stderr[-3000:]
    assert "Running stage 'evaluate'" in first.stdout
    assert (pipeline_runs["b"] / "data/metrics/eval.json").is_file()
    assert "up to date" in run(["dvc", "status", "evaluate"], pipeline_runs["b"]).stdout


def test_sigkill_mid_epoch_then_repro_resumes_to_the_same_metrics(pipeline_runs):
    a, b, resumed = pipeline_runs["a"], pipeline_runs["b"], pipeline_runs["resumed"]
    assert pipeline_runs["killed_code"] == -signal.SIGKILL
    assert pipeline_runs["state_after_kill"] == 1, "the kill should land in epoch 2, after epoch 1's state"
    assert not pipeline_runs["adapter_after_kill"]
    assert pipeline_runs["leftovers_after_kill"] == []

    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert re.search(rf"resuming from {re.escape(str(STATE))}: epoch 2\b", resumed.stdout), resumed.stdout[-3000:]
    assert "epoch 1/3:" not in resumed.stdout  # not trained again: its log is replayed from the state
    assert "epoch 1/3 (from the saved state):" in resumed.stdout
    assert (a / "data/metrics/eval.json").read_text() == (b / "data/metrics/eval.json").read_text()
    assert same_weights(a / "data/model/adapter.pt", b / "data/model/adapter.pt")
    assert "up to date" in run(["dvc", "status", "evaluate"], a).stdout


def test_sigterm_and_sigint_stop_cleanly_and_resume(copies, pipeline_runs, tmp_path):
    """SIGTERM in epoch 2, SIGINT in epoch 3 of the resumed run, then a run to the end: the weights
    are those of B's uninterrupted run."""
    _, b, logs = copies
    out = tmp_path / "direct"
    state = out / "last.pt"
    command = train_command(b / "params.yaml", b, out)

    for name, sig, epoch_done in (("sigterm", signal.SIGTERM, 1), ("sigint", signal.SIGINT, 2)):
        proc = Background(command, b, logs, name)
        proc.until(lambda: saved_epoch(state) == epoch_done, what=f"epoch {epoch_done}'s state")
        time.sleep(0.1)
        os.kill(proc.proc.pid, sig)
        assert proc.wait() == 1, proc.stderr[-2000:]
        last_line = proc.stderr.rstrip("\n").split("\n")[-1].split("\r")[-1]
        assert re.fullmatch(
            rf"train: stopped by signal {int(sig)} at epoch {epoch_done + 1}, batch \d+; "
            rf"state saved to {re.escape(str(state))}; rerun to resume",
            last_line,
        ), last_line
        saved = torch.load(state, map_location="cpu", weights_only=True)
        assert saved["epoch"] == epoch_done and saved.get("step", saved.get("batch")) > 0
        assert not (out / "adapter.pt").exists() and temp_leftovers(out) == []

    final = invoke("train", *command[3:])
    assert final.code == 0, final.stderr[-2000:]
    assert re.search(rf"resuming from {re.escape(str(state))}: epoch 3\b", final.stdout), final.stdout
    assert same_weights(out / "adapter.pt", b / "data/model/adapter.pt")


def test_same_metrics_with_worker_processes(copies, pipeline_runs, tmp_path):
    """Train and evaluate directly with 2 loader workers each: the same eval.json as B's (0 workers)."""
    _, b, _ = copies
    params = write_params(tmp_path / "params.yaml", b / "params.yaml", train={"workers": 2}, evaluate={"workers": 2})
    out = tmp_path / "workers"
    trained = invoke("train", *train_command(params, b, out)[3:])
    assert trained.code == 0, trained.stderr[-2000:]
    evaluated = invoke(
        "evaluate",
        "--params",
        params,
        "--shards",
        b / "data/shards",
        "--model",
        out / "adapter.pt",
        "--out",
        out / "metrics",
    )
    assert evaluated.code == 0, evaluated.stderr[-2000:]
    assert same_weights(out / "adapter.pt", b / "data/model/adapter.pt")
    assert (out / "metrics" / "eval.json").read_text() == (b / "data/metrics/eval.json").read_text()


SHARD_WRITE = "liftplus.data.shard_writer:_Shard.close"
"""The shard stage held here has its first tar half-written in its temporary folder."""


def shard_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((".shards.tmp-", ".shards.old-")))


def test_shard_killed_mid_write_leaves_a_temp_that_the_next_run_removes(tmp_path, params_file):
    out = tmp_path / "data" / "shards"
    killed = PausedStage("shard", SHARD_WRITE, "--params", params_file, "--out", out, workdir=tmp_path)
    try:
        killed.wait_until_paused()
        os.killpg(killed.proc.pid, signal.SIGKILL)
        assert killed.wait() == -signal.SIGKILL
    finally:
        killed.kill()
    left = shard_leftovers(out.parent)
    assert len(left) == 1 and left[0].startswith(".shards.tmp-"), left
    assert not out.exists()

    again = invoke("shard", "--params", params_file, "--out", out)
    assert again.code == 0, again.stderr[-2000:]
    assert shard_leftovers(out.parent) == [] and temp_leftovers(out.parent) == []
    assert (out / "manifest.json").is_file()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_shard_stopped_by_a_signal_mid_write_leaves_nothing(tmp_path, params_file, shards, sig):
    """SIGTERM (a scheduler's stop) or Ctrl-C: one line, exit 1, the previous shards as they were."""
    out = Path(shutil.copytree(shards, tmp_path / "data" / "shards"))
    before = tree(out)
    stopped = PausedStage("shard", SHARD_WRITE, "--params", params_file, "--out", out, workdir=tmp_path)
    try:
        stopped.wait_until_paused()
        assert shard_leftovers(out.parent), "the stage should be writing into its temporary folder"
        os.kill(stopped.proc.pid, sig)
        code = stopped.wait()
    finally:
        stopped.kill()
    assert code == 1
    assert_one_line_error(
        stopped.outcome(), f"error: shard: stopped by signal {int(sig)}; nothing was written, {out} is as it was before"
    )
    assert_nothing_left(out.parent, {f"shards/{name}": content for name, content in before.items()})
