"""Which failures are worth a retry, what each stage did, which names experiments get:
decided from structure (stage commands DVC started, dvc.lock, dvc status), not DVC's wording."""

from __future__ import annotations

import subprocess

import pytest
import zc.lockfile
from fakeproject import experiment_values, stage_calls, write_params

from flows import dvc_tasks, pipeline, sweep  # before any test: importing Prefect configures logging
from flows.dvc_tasks import (
    RAN,
    RESTORED,
    UP_TO_DATE,
    DvcCommandFailed,
    StageRun,
    classify_failure,
    experiment_base_name,
    flatten_metrics,
    format_override,
    override_parts,
    run_dvc,
    stage_outcomes,
    stage_seconds,
)

VALIDATION_FAILURE = """\
Running stage 'validate':
> python -m stages.validate
error: validate: split 'train' has 3 classes, manifest says 10
ERROR: failed to reproduce 'validate': failed to run: python -m stages.validate, exited with 1
"""


def runs(*stages_and_codes: tuple[str, int | None]) -> list[StageRun]:
    return [StageRun(stage, float(i), float(i) + 0.5, code) for i, (stage, code) in enumerate(stages_and_codes)]


def test_stage_error_line_is_permanent_and_kept_whole():
    failure = classify_failure(1, VALIDATION_FAILURE, "dvc repro validate", runs(("shard", 0), ("validate", 1)))
    assert not failure.transient
    assert str(failure) == "error: validate: split 'train' has 3 classes, manifest says 10"


@pytest.mark.parametrize(
    "output, stage_runs, lock_held",
    [
        ("", runs(("train", -9)), False),
        ("", runs(("train", 137)), False),
        ("", [], True),
        ("error: OSError: [Errno 5] Input/output error: 'data/raw/x.png'", runs(("shard", 1)), False),
        ("Traceback (most recent call last):\nRuntimeError: CUDA error: unknown", runs(("train", 1)), False),
    ],
    ids=["signal", "shell-signal", "lock", "io-error", "crash-without-error-line"],
)
def test_transient_failures_are_retried(output, stage_runs, lock_held):
    assert classify_failure(255, output, "dvc repro", stage_runs, lock_held).transient


def test_the_killed_stage_and_its_exit_status_come_from_the_stage_runs_not_the_text():
    text = "something DVC said in words of its own"
    failure = classify_failure(255, text, "dvc repro train", runs(("shard", 0), ("train", -9)))
    assert failure.transient
    assert str(failure) == f"stage 'train' was killed (exit status -9): {text}"
    crashed = classify_failure(255, text, "dvc repro train", runs(("train", 3)))
    assert (crashed.transient, str(crashed)) == (True, f"stage 'train' failed (exit status 3): {text}")


def test_dvc_killed_itself_is_transient():
    assert classify_failure(-15, "Running stage 'train':", "dvc repro train").transient


def test_dvc_refusing_the_pipeline_is_permanent():
    output = "ERROR: failed to reproduce 'train': missing data 'source': data/shards/manifest.json"
    failure = classify_failure(255, output, "dvc repro train")
    assert not failure.transient
    assert (
        str(failure)
        == "dvc repro train failed: failed to reproduce 'train': missing data 'source': data/shards/manifest.json"
    )


def test_stage_outcomes_from_stage_runs_and_lock_entries():
    before = {"shard": {"md5": "a"}, "train": {"md5": "b"}, "evaluate": {"md5": "c"}, "register": {"md5": "d"}}
    after = {"shard": {"md5": "a"}, "train": {"md5": "b2"}, "evaluate": {"md5": "c2"}, "register": {"md5": "d"}}
    plan = ["shard", "train", "evaluate", "register"]
    assert stage_outcomes(plan, runs(("train", 0)), before, after, stale_before=["register"]) == {
        "shard": UP_TO_DATE,  # no command, same lock entry, not stale
        "train": RAN,  # its command ran
        "evaluate": RESTORED,  # no command, yet a new lock entry: from the run cache
        "register": RESTORED,  # no command, same entry, but stale before: outputs checked out
    }
    assert stage_outcomes(["shard"], [], {}, {"shard": {"md5": "a"}}) == {"shard": RESTORED}


def test_stage_seconds_run_from_its_start_to_the_next_stage_start():
    stage_runs = [StageRun("train", 10.0, 14.0, 0), StageRun("train", 14.0, 15.0, 0), StageRun("evaluate", 15.5, 16, 0)]
    assert stage_seconds(stage_runs, "train", 20.0) == pytest.approx(5.5)
    assert stage_seconds(stage_runs, "evaluate", 20.0) == pytest.approx(4.5)
    assert stage_seconds(stage_runs, "shard", 20.0) is None


@pytest.mark.parametrize(
    "prefix, parts, expected",
    [
        ("sweep", override_parts({"train.lr": 0.01, "train.loss": "ce"}), "sweep-lr_0.01-loss_ce"),
        ("paper", ["demo", "lift+"], "paper-demo-liftplus"),
        ("paper", ["demo", "lift"], "paper-demo-lift"),
        (
            "run",
            override_parts({"model.prompt": "a photo of a {}.", "x.y": "..lock"}),
            "run-prompt_-a-photo-of-a-y",
        ),
        ("run", ["x" * 80], "run-" + "x" * 56),
        ("", [], "exp"),
    ],
)
def test_experiment_names_are_chosen_in_git_ref_letters(prefix, parts, expected):
    assert experiment_base_name(prefix, parts) == expected


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


# ---------------------------------------------------------------- on a real DVC project, reworded

REWORDED_DVC = '''\
"""Every message DVC prints, every word spelled backwards (test_dvc_tasks: no decision may read them)."""
import logging


def reword(text):
    return " ".join(word[::-1] for word in str(text).split(" "))


_factory = logging.getLogRecordFactory()


def _record(*args, **kwargs):
    record = _factory(*args, **kwargs)
    if record.name == "dvc" or record.name.startswith("dvc."):
        record.msg, record.args = reword(record.getMessage()), ()
    return record


logging.setLogRecordFactory(_record)
try:
    import dvc.exceptions
    import dvc.ui
except ImportError:
    pass
else:
    _init, _write = dvc.exceptions.DvcException.__init__, dvc.ui.Console.write
    dvc.exceptions.DvcException.__init__ = lambda self, msg, *a: _init(self, reword(msg), *a)
    dvc.ui.Console.write = lambda self, *objects, **kw: _write(self, *map(reword, objects), **kw)
'''


@pytest.fixture
def reworded_dvc(tmp_path, monkeypatch):
    """DVC commands the flows start speak backwards (a sitecustomize on their PYTHONPATH)."""
    site = tmp_path / "reworded"
    site.mkdir()
    (site / "sitecustomize.py").write_text(REWORDED_DVC)
    monkeypatch.setenv("PYTHONPATH", str(site))


def failure_of(state) -> DvcCommandFailed:
    """The failure a task body returned as a Failed state (``pipeline.returned_as_state``)."""
    with pytest.raises(DvcCommandFailed) as raised:
        state.result()
    return raised.value


@pytest.mark.slow
def test_outcomes_failures_and_names_do_not_depend_on_dvc_wording(fake_project, reworded_dvc, caplog, monkeypatch):
    caplog.set_level("INFO", logger="liftplus.flows")
    repo = str(fake_project)
    assert pipeline.repro_stage.fn("validate", repo) == {"shard": RAN, "validate": RAN}
    logged = caplog.text
    assert "gninnuR egats" in logged and "Running stage" not in logged, "DVC's messages are reworded"
    assert pipeline.repro_stage.fn("validate", repo) == {"shard": UP_TO_DATE, "validate": UP_TO_DATE}

    # shard's run cache: seed 1 runs, back to seed 0 is restored, not run.
    write_params(fake_project, data={"seed": 1})
    assert pipeline.repro_stage.fn("shard", repo) == {"shard": RAN}
    write_params(fake_project, data={"seed": 0})
    assert pipeline.repro_stage.fn("shard", repo) == {"shard": RESTORED}
    assert stage_calls() == ["shard", "validate", "shard"]
    assert pipeline.repro_stage.fn("shard", repo, force=True) == {"shard": RAN}

    # Which stage failed and how: from the stage's exit status and our own error line.
    write_params(fake_project, fake={"fail_validate": True})
    failed = failure_of(pipeline.repro_stage.fn("validate", repo))
    assert not failed.transient
    assert str(failed) == "error: validate: class 'sandal' has 0 training images, expected at least 1"
    write_params(fake_project, fake={"flaky_train": True})
    killed = failure_of(pipeline.repro_stage.fn("train", repo))
    assert killed.transient and str(killed).startswith("stage 'train' was killed (exit status ")
    held = zc.lockfile.LockFile(str(fake_project / ".dvc" / "tmp" / "lock"))
    try:
        with pytest.raises(DvcCommandFailed) as locked:
            run_dvc(["repro", "shard"], repo)
    finally:
        held.close()
    assert (locked.value.transient, str(locked.value)) == (
        True,
        "dvc repro shard: the DVC lock is held by another process",
    )

    # An experiment: the flow's name, and what ran in it (shard, validate, init_head were up to date).
    write_params(fake_project)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "locked"], cwd=repo, check=True)
    name, outcomes = pipeline.run_experiment.fn({"train.lr": 0.01}, [], repo)
    assert name == "run-lr_0.01"
    assert outcomes == {
        "shard": UP_TO_DATE,
        "validate": UP_TO_DATE,
        "init_head": UP_TO_DATE,
        "train": RAN,
        "evaluate": RAN,
        "register": RAN,
    }
    again, outcomes = pipeline.run_experiment.fn({"train.lr": 0.01}, [], repo)
    assert again == "run-lr_0.01-2", "a name already taken gets a suffix"
    assert set(outcomes.values()) == {UP_TO_DATE, RESTORED}, "the same params again: all from the run cache"
    # Queued experiments: the names the sweep chose, taken from then on.
    points = [{"train.lr": 0.01}, {"train.lr": 0.02}]
    names = sweep.sweep_names.fn(points, repo)
    assert names == ["sweep-lr_0.01", "sweep-lr_0.02"]
    for point, queued in zip(points, names, strict=True):
        assert sweep.queue_experiment.fn(point, queued, repo) == queued
    assert dvc_tasks.new_experiment_names(repo, ["sweep-lr_0.01", "run-lr_0.01", "fresh"]) == [
        "sweep-lr_0.01-2",
        "run-lr_0.01-3",
        "fresh",
    ]

    monkeypatch.delenv("PYTHONPATH")  # DVC in its own words again, for the checks below
    lrs = experiment_values(fake_project, "params", "params.yaml", "train", "lr")
    assert lrs == {"run-lr_0.01": 0.01, "run-lr_0.01-2": 0.01, "sweep-lr_0.01": 0.01, "sweep-lr_0.02": 0.02}, (
        "two experiments run and two queued, each under the name the flow chose, with its params"
    )
