"""The pipeline flow on the fake DVC project, against the session's temporary Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
import zc.lockfile
from fakeproject import dvc, stage_calls, write_params
from prefect.client.orchestration import get_client

from flows import dvc_tasks
from flows.dvc_tasks import DvcCommandFailed, lock_held_failure
from flows.pipeline import STAGES, liftplus_pipeline

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]
NO_WAIT = {"retry_delay_seconds": [0]}


def test_runs_every_stage_then_reports_all_up_to_date(prefect_api, fake_project):
    first = liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    assert first["stages"] == {stage: "ran" for stage in STAGES}
    assert stage_calls() == list(STAGES)
    lock = yaml.safe_load((fake_project / "dvc.lock").read_text())
    assert sorted(lock["stages"]) == sorted(STAGES)
    # lr 0.02, la: 90 - 1000 * 0.01 = 80
    assert first["metrics"]["data/metrics/eval.json:test.acc"] == pytest.approx(80.0)

    second = liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    assert second["stages"] == {stage: "up to date" for stage in STAGES}
    assert stage_calls() == list(STAGES), "nothing may run a second time"

    markdown = latest_artifact("liftplus-metrics")
    assert "| register | up to date |" in markdown

    # A changed param: asking for evaluate alone brings train up to date first; shard stays.
    write_params(fake_project, train={"lr": 0.01})
    third = liftplus_pipeline(stages=["evaluate"], repo=str(fake_project), **NO_WAIT)
    assert third["stages"] == {"evaluate": "ran", "train": "ran"}
    assert stage_calls() == [*STAGES, "train", "evaluate"]
    assert third["metrics"]["data/metrics/eval.json:test.acc"] == pytest.approx(90.0)


def latest_artifact(key: str) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts(limit=50)
    return next(a for a in artifacts if a.key == key).data


def sections(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("#")]


def test_metrics_artifact_leads_with_the_evaluation_then_data_then_plots(prefect_api, fake_project):
    liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    markdown = latest_artifact("liftplus-metrics")
    assert sections(markdown) == [
        "# liftplus pipeline: workspace",
        "## Evaluation",
        "## Data",
        "## Plots",
        "## Stages",
        "## All metrics",
    ]
    evaluation = json.loads((fake_project / "data/metrics/eval.json").read_text())
    assert evaluation == {
        "test": {"acc": 80.0, "acc_mean_class": 78.75, "acc_many": 82.5, "acc_medium": 75.25, "acc_few": 69.5},
        "tte": True,
    }
    assert (
        "| accuracy (%) | value |\n|---|---:|\n| overall | 80.00 |\n| mean per class | 78.75 |\n"
        "| many | 82.50 |\n| medium | 75.25 |\n| few | 69.50 |\n\nTest-time ensembling (TTE): on\n"
    ) in markdown
    stats = json.loads((fake_project / "data/stats/longtail.json").read_text())
    data = markdown.split("## Data")[1].split("## Plots")[0]
    assert [line for line in data.splitlines() if line.startswith("| ") and "statistic" not in line] == [
        f"| dataset.{key} | {value:g} |" for key, value in stats["dataset"].items()
    ]
    page = fake_project / "dvc_plots" / "index.html"
    assert page.is_file() and f"]({page.resolve().as_uri()})" in markdown.split("## Plots")[1]


def test_up_to_date_pipeline_starts_no_dvc_process(prefect_api, fake_project, monkeypatch):
    liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    started = []
    popen = subprocess.Popen
    monkeypatch.setattr(dvc_tasks.subprocess, "Popen", lambda args, **kw: started.append(args) or popen(args, **kw))
    again = liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    assert again["stages"] == {stage: "up to date" for stage in STAGES}
    assert again["metrics"]["data/metrics/eval.json:test.acc"] == pytest.approx(80.0)
    assert started == [], "one in-process dvc status decided; no `dvc repro` per stage"


def pipeline_command(project, env) -> subprocess.CompletedProcess:
    """``python -m flows.pipeline --repo project`` as a user types it; stdout and stderr together."""
    return subprocess.run(
        [sys.executable, "-m", "flows.pipeline", "--repo", str(project)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )


def test_command_line_failure_ends_with_the_stage_error_line_and_no_traceback(fake_project, tmp_path):
    write_params(fake_project, fake={"fail_validate": True})
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PYTHONPATH=str(PROJECT_ROOT),
    )
    run = pipeline_command(fake_project, env)
    line = "error: validate: class 'sandal' has 0 training images, expected at least 1"
    lines = run.stdout.splitlines()
    assert run.returncode == 1, run.stdout
    assert lines[-1] == line, run.stdout
    assert "Traceback" not in run.stdout and "NoneType: None" not in run.stdout, run.stdout
    assert lines.count(line) == 1, "the line itself is printed once, last"
    mentions = [text for text in lines if line in text]
    assert len(mentions) == 3 and mentions[0].endswith(f"Task run 'dvc-repro-validate' - {line}"), (
        "besides the last line only the stage's own stderr line and the flow's final state hold it"
    )
    assert "| Flow run '" in mentions[1] and mentions[1].endswith(f" - Finished in state Failed({line!r})"), (
        "the flow run's final state is the line"
    )
    assert stage_calls() == ["shard", "validate"]


def test_command_line_no_op_starts_no_flow_run(prefect_api, fake_project, tmp_path):
    """Everything up to date and no server configured: one status check, no temporary Prefect API."""
    liftplus_pipeline(repo=str(fake_project), **NO_WAIT)
    before = stage_calls()
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PYTHONPATH=str(PROJECT_ROOT))
    run = pipeline_command(fake_project, env)
    assert run.returncode == 0, run.stdout
    assert run.stdout.splitlines()[-1] == "pipeline: every stage is up to date (dvc status); no flow run started"
    assert "temporary server" not in run.stdout.lower() and "Flow run" not in run.stdout, run.stdout
    assert stage_calls() == before
    assert not (tmp_path / "prefect-home").exists() or not any((tmp_path / "prefect-home").rglob("*.db"))


def test_transient_failure_is_retried(prefect_api, fake_project):
    write_params(fake_project, fake={"flaky_train": True})
    result = liftplus_pipeline(stages=["train"], repo=str(fake_project), **NO_WAIT)
    assert result["stages"]["train"] == "ran"
    assert stage_calls() == ["shard", "validate", "init_head", "train", "train"], (
        "train killed once by SIGKILL, then retried; its upstream did not rerun"
    )


def test_dvc_lock_held_by_another_process_is_retried(prefect_api, fake_project, monkeypatch):
    lockfile = fake_project / ".dvc" / "tmp" / "lock"
    lockfile.parent.mkdir(exist_ok=True)
    held = zc.lockfile.LockFile(str(lockfile))
    failures = []

    def release_after_first_failure(*args, **kwargs):
        held.close()
        failures.append(lock_held_failure(*args, **kwargs))
        return failures[-1]

    monkeypatch.setattr(dvc_tasks, "lock_held_failure", release_after_first_failure)
    try:
        result = liftplus_pipeline(stages=["shard"], repo=str(fake_project), **NO_WAIT)
    finally:
        held.close()
    assert [(f.transient, str(f)) for f in failures] == [(True, "dvc status: the DVC lock is held by another process")]
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
    assert state.message == "error: validate: class 'sandal' has 0 training images, expected at least 1"
    with pytest.raises(DvcCommandFailed) as failure:
        state.result()
    message = str(failure.value)
    assert "error: validate: class 'sandal' has 0 training images, expected at least 1" in message
    assert not failure.value.transient
    assert stage_calls() == ["shard", "validate"], "validate ran once; no later stage ran"


def test_set_params_runs_an_experiment_and_leaves_params_yaml_alone(prefect_api, fake_project):
    params_before = (fake_project / "params.yaml").read_text()
    result = liftplus_pipeline(set_params={"train.lr": "0.01", "train.loss": "ce"}, repo=str(fake_project), **NO_WAIT)
    assert result["experiment"]
    assert (fake_project / "params.yaml").read_text() == params_before
    assert not (fake_project / "dvc.lock").exists(), "the workspace pipeline was not touched"
    assert result["metrics"]["data/metrics/eval.json:test.acc"] == pytest.approx(95.0)

    shown = json.loads(dvc(fake_project, "exp", "show", "--json").stdout)
    experiments = {
        rev["name"]: rev["data"]["params"]["params.yaml"]["data"]["train"]
        for row in shown
        for exp in row.get("experiments") or []
        for rev in exp["revs"]
    }
    assert experiments[result["experiment"]] == {"lr": 0.01, "loss": "ce"}

    markdown = latest_artifact("liftplus-metrics")
    assert sections(markdown)[0] == f"# liftplus pipeline: experiment `{result['experiment']}`"
    assert "| overall | 95.00 |" in markdown and "| few | 84.50 |" in markdown
    page = fake_project / "dvc_plots" / "experiments" / result["experiment"] / "index.html"
    assert page.is_file() and f"]({page.resolve().as_uri()})" in markdown, "the experiment's own plots page"


def test_unknown_stage_is_refused_before_anything_runs(prefect_api, fake_project):
    with pytest.raises(ValueError, match="dvc.yaml has no stage 'trian'"):
        liftplus_pipeline(stages=["trian"], repo=str(fake_project), **NO_WAIT)
    assert stage_calls() == []
