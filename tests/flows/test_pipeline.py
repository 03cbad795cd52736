"""The pipeline flow on the fake DVC project, against the session's temporary Prefect API."""

from __future__ import annotations

import json

import pytest
import yaml
import zc.lockfile
from prefect.client.orchestration import get_client

from fakeproject import dvc, stage_calls, write_params
from flows import dvc_tasks
from flows.dvc_tasks import DvcCommandFailed, classify_failure
from flows.pipeline import STAGES, liftplus_pipeline

pytestmark = pytest.mark.slow
NO_WAIT = {"retry_delay_seconds": [0]}


def test_runs_every_stage_then_reports_all_up_to_date(prefect_api, fake_project):
    first = liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    assert first["stages"] == {stage: "ran" for stage in STAGES}
    assert stage_calls() == list(STAGES)
    lock = yaml.safe_load((fake_project / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    # lr 0.02, la: 90 - 1000 * 0.01 = 80
    assert first["metrics"]["data/metrics/eval.json:accuracy"] == pytest.approx(80.0)

    second = liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    assert second["stages"] == {stage: "up to date" for stage in STAGES}
    assert stage_calls() == list(STAGES), "nothing may run a second time"

    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(limit=50)
    markdown = next(a for a in artifact if a.key == "liftplus-metrics").data
    assert "| accuracy | 80 |" in markdown
    assert "| register | up to date |" in markdown

    # A changed param: asking for evaluate alone brings train up to date first; shard stays.
    write_params(fake_project, train={"lr": 0.01})
    third = liftplus_pipeline(stages=["evaluate"], repo=str(fake_project), **NO_WAIT)
    assert third["stages"] == {"evaluate": "ran", "train": "ran"}
    assert stage_calls() == [*STAGES, "train", "evaluate"]
    assert third["metrics"]["data/metrics/eval.json:accuracy"] == pytest.approx(90.0)


def test_transient_failure_is_retried(prefect_api, fake_project):
    write_params(fake_project, fake={"flaky_train": True})
    result = liftplus_pipeline(stages=["train"], repo=str(fake_project), **NO_WAIT)
    assert result["stages"]["train"] == "ran"
    assert stage_calls() == ["shard", "validate", "init_head", "train", "train"], (
        "train killed once by SIGKILL, then retried; its upstream did not rerun")


def test_dvc_lock_held_by_another_process_is_retried(prefect_api, fake_project, monkeypatch):
    lockfile = fake_project / ".dvc" / "tmp" / "lock"
    lockfile.parent.mkdir(exist_ok=True)
    held = zc.lockfile.LockFile(str(lockfile))
    failures = []

    def release_after_first_failure(*args, **kwargs):
        held.close()
        failures.append(classify_failure(*args, **kwargs))
        return failures[-1]

    monkeypatch.setattr(dvc_tasks, "classify_failure", release_after_first_failure)
    try:
        result = liftplus_pipeline(stages=["shard"], repo=str(fake_project), **NO_WAIT)
    finally:
        held.close()
    assert [(f.transient, str(f)) for f in failures] == [
        (True, "dvc repro shard: the DVC lock is held by another process")]
    assert result["stages"] == {"shard": "ran"}
    assert stage_calls() == ["shard"]


def test_transient_failure_gives_up_after_the_retries(prefect_api, fake_project):
    write_params(fake_project, fake={"flaky_train": True})
    with pytest.raises(DvcCommandFailed, match="stage 'train' was killed") as failure:
        liftplus_pipeline(stages=["train"], repo=str(fake_project), retries=0, **NO_WAIT)
    assert failure.value.transient
    assert stage_calls() == ["shard", "validate", "init_head", "train"]


def test_validation_failure_stops_without_retries_and_shows_its_message(prefect_api, fake_project):
    write_params(fake_project, fake={"fail_validate": True})
    state = liftplus_pipeline(repo=str(fake_project), return_state=True, **NO_WAIT)
    assert state.is_failed()
    with pytest.raises(DvcCommandFailed) as failure:
        state.result()
    message = str(failure.value)
    assert "error: validate: class 'sandal' has 0 training images, expected at least 1" in message
    assert not failure.value.transient
    assert stage_calls() == ["shard", "validate"], "validate ran once; no later stage ran"


def test_set_params_runs_an_experiment_and_leaves_params_yaml_alone(prefect_api, fake_project):
    params_before = (fake_project / "params.yaml").read_text()
    result = liftplus_pipeline(
        set_params={"train.lr": "0.01", "train.loss": "ce"}, repo=str(fake_project), **NO_WAIT
    )
    assert result["experiment"]
    assert (fake_project / "params.yaml").read_text() == params_before
    assert not (fake_project / "dvc.lock").exists(), "the workspace pipeline was not touched"
    assert result["metrics"]["data/metrics/eval.json:accuracy"] == pytest.approx(95.0)

    shown = json.loads(dvc(fake_project, "exp", "show", "--json").stdout)
    experiments = {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["train"]
        for row in shown
        for exp in row.get("experiments") or []
        for rev in exp["revs"]
    }
    assert experiments[result["experiment"]] == {"lr": 0.01, "loss": "ce"}


def test_unknown_stage_is_refused_before_anything_runs(prefect_api, fake_project):
    with pytest.raises(ValueError, match="dvc.yaml has no stage 'trian'"):
        liftplus_pipeline(stages=["trian"], repo=str(fake_project), **NO_WAIT)
    assert stage_calls() == []
