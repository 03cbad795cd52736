"""Params back at a point already trained: DVC restores ``train`` from its run cache, it does not train again.

The resumable state (``data/train_state/last.pt``) lies outside the stage's outs (a
persistent out keeps DVC from using its run cache), git-ignored. In a throw-away copy of
the project on tiny data (one epoch): ``dvc repro train`` on the baseline, again with
another ``train.lr``, then with the baseline's params once more: the third is restored
from the run cache, byte for byte, in a fraction of the first's time. The state is then
the experiment's; a real (forced) run of the baseline afterwards ignores it and trains
from scratch to the same weights.
"""

from __future__ import annotations

import io
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml
from pipeline_project import learnable_fashion_mnist, make_project, run

REPO = Path(__file__).resolve().parents[1]
STATE = Path("data/train_state/last.pt")
ADAPTER = Path("data/model/adapter.pt")
METRICS = Path("dvclive/train/metrics.json")
RESTORED = "Stage 'train' is cached - skipping run, checking out outputs"
"""What DVC 3 prints for a stage restored from its run cache; the flows never read it (flows/dvc_run.py decides
from the stage processes DVC started), this test only shows a user the line they will see."""
PROJECT = {
    "validate": {"sample_size": 32},
    "train": {"epochs": 1, "batch_size": 8, "micro_batch": 4, "workers": 0},
    "evaluate": {"batch_size": 64, "workers": 0},
}
EXPERIMENT_LR = 0.05


def fingerprint(path: Path) -> str:
    """The run a training state belongs to."""
    return torch.load(path, map_location="cpu", weights_only=True)["fingerprint"]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]


def timed(cmd: list[str], project: Path) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    result = run(cmd, project)
    return result, time.monotonic() - start


@pytest.fixture(scope="module")
def revisited(tmp_path_factory):
    """Baseline, experiment, baseline again; then the baseline forced to run for real."""
    base = tmp_path_factory.mktemp("run_cache")
    raw = learnable_fashion_mnist(base / "raw", train_per_class=24, test_per_class=4)
    project = make_project(base / "project", raw, **PROJECT)
    run(["dvc", "repro", "init_head"], project)  # shards, stats and head: not what is timed
    params = project / "params.yaml"
    baseline_params = params.read_text()

    first, first_s = timed(["dvc", "repro", "train"], project)
    out = {
        "project": project,
        "first": first,
        "first_s": first_s,
        "first_adapter": (project / ADAPTER).read_bytes(),
        "first_metrics": (project / METRICS).read_text(),
        "baseline_fingerprint": fingerprint(project / STATE),
    }

    experiment = yaml.safe_load(baseline_params)
    experiment["train"]["lr"] = EXPERIMENT_LR
    params.write_text(yaml.safe_dump(experiment, sort_keys=False))
    out["second"], out["second_s"] = timed(["dvc", "repro", "train"], project)
    out["second_adapter"] = (project / ADAPTER).read_bytes()
    out["experiment_state"] = (project / STATE).read_bytes()
    out["experiment_fingerprint"] = fingerprint(project / STATE)

    params.write_text(baseline_params)
    out["third"], out["third_s"] = timed(["dvc", "repro", "train"], project)
    out["third_adapter"] = (project / ADAPTER).read_bytes()
    out["third_metrics"] = (project / METRICS).read_text()
    out["state_after_restore"] = (project / STATE).read_bytes()
    out["status_after_restore"] = run(["dvc", "status"], project)
    print(
        f"\ntrain: baseline trained in {first_s:.1f} s, experiment {out['second_s']:.1f} s, "
        f"baseline restored from the run cache in {out['third_s']:.1f} s"
    )

    out["forced"] = run(["dvc", "repro", "--force", "--single-item", "train"], project)
    out["forced_fingerprint"] = fingerprint(project / STATE)
    return out


def test_dvc_yaml_keeps_the_state_out_of_trains_outs():
    """A persistent out (or the state folder as an out at all) would turn DVC's run cache off for train."""
    train = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in train["outs"]]
    assert outs == [str(ADAPTER)]
    declared = [entry for key in ("outs", "metrics", "plots") for entry in train.get(key, [])]
    assert not any(isinstance(o, dict) and any((v or {}).get("persist") for v in o.values()) for o in declared)
    assert not any(str(STATE.parent) in str(o) for o in declared)


def test_the_state_is_git_ignored():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", str(STATE)], check=False, cwd=REPO)
    assert ignored.returncode == 0, f"{STATE} is not git-ignored"


@pytest.mark.slow
def test_baseline_and_experiment_train(revisited):
    first, second = revisited["first"], revisited["second"]
    assert "Running stage 'train'" in first.stdout and "epoch 1/1:" in first.stdout
    assert "Running stage 'train'" in second.stdout
    assert "resuming from" not in second.stdout and "nothing to train" not in second.stdout  # not the baseline's state
    assert f"lr {EXPERIMENT_LR:.4g}" in second.stdout
    assert revisited["second_adapter"] != revisited["first_adapter"]
    assert revisited["experiment_fingerprint"] != revisited["baseline_fingerprint"]


@pytest.mark.slow
def test_back_at_the_baseline_train_is_restored_from_the_run_cache(revisited):
    third = revisited["third"]
    assert RESTORED in third.stdout, third.stdout[-3000:]
    assert "Running stage 'train'" not in third.stdout and "epoch 1/1" not in third.stdout
    assert revisited["third_adapter"] == revisited["first_adapter"]
    assert revisited["third_metrics"] == revisited["first_metrics"]  # the uncached DVCLive metrics come back too
    print(f"\nfirst (trained) {revisited['first_s']:.1f} s, third (restored) {revisited['third_s']:.1f} s")
    assert revisited["third_s"] < revisited["first_s"]
    status = revisited["status_after_restore"].stdout
    assert "train:" not in status and "train_state" not in status, status


@pytest.mark.slow
def test_a_real_run_after_the_restore_ignores_the_experiments_state(revisited):
    """The restore leaves the experiment's state in place; the baseline run for real starts afresh,
    ends with the first run's weights and leaves its own state."""
    project, forced = revisited["project"], revisited["forced"]
    assert revisited["state_after_restore"] == revisited["experiment_state"]  # DVC left it alone
    assert "Running stage 'train'" in forced.stdout
    assert "resuming from" not in forced.stdout and "nothing to train" not in forced.stdout
    assert "epoch 1/1:" in forced.stdout and "(from the saved state)" not in forced.stdout
    trained = weights(project / ADAPTER)
    first = torch.load(io.BytesIO(revisited["first_adapter"]), map_location="cpu", weights_only=True)
    assert trained.keys() == first["state"].keys()
    assert all(torch.equal(trained[k], first["state"][k]) for k in trained)
    assert revisited["forced_fingerprint"] == revisited["baseline_fingerprint"]
    assert "up to date" in run(["dvc", "status", "train"], project).stdout
