"""The register gate, GTO registration under `dvc repro`, `liftplus models`, resolving a version."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

from bench.common import offline_env
from liftplus.commands.models import models
from liftplus.errors import CheckpointError, DataError, GateFailed, LiftplusError
from liftplus.params import RegisterParams
from liftplus.registry import (
    check_gate,
    read_metrics,
    register_model,
    registered_versions,
    resolve_model,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NAME = "liftplus-classifier"
METRICS = {"acc": 71.5, "acc_mean_class": 64.25, "acc_many": 80.0, "acc_medium": 60.5, "acc_few": None}


# --- the gate ---------------------------------------------------------------------


def test_gate_passes_when_every_set_criterion_holds():
    check_gate(METRICS, RegisterParams(min_accuracy=71.5, min_mean_class_accuracy=60, min_few_accuracy=None))


@pytest.mark.parametrize(
    "gate, message",
    [
        (dict(min_accuracy=72), "register gate: acc 71.50 < register.min_accuracy 72"),
        (dict(min_mean_class_accuracy=64.5), "acc_mean_class 64.25 < register.min_mean_class_accuracy 64.5"),
        (dict(min_few_accuracy=0), "acc_few is null in eval.json, but register.min_few_accuracy requires >= 0"),
    ],
)
def test_gate_names_the_failed_criterion(gate, message):
    with pytest.raises(GateFailed) as failed:
        check_gate(METRICS, RegisterParams(**gate), "eval.json")
    assert message in str(failed.value)
    assert "\n" not in str(failed.value)


def test_few_gate_checks_a_reported_few_accuracy():
    check_gate({**METRICS, "acc_few": 12.0}, RegisterParams(min_few_accuracy=12.0))
    with pytest.raises(GateFailed, match="acc_few 11.99 < register.min_few_accuracy 12"):
        check_gate({**METRICS, "acc_few": 11.99}, RegisterParams(min_few_accuracy=12.0))


def test_read_metrics_rejects_what_it_cannot_gate(tmp_path):
    path = tmp_path / "eval.json"
    path.write_text(json.dumps({"test": {"acc": "high"}}))
    with pytest.raises(DataError, match="'test.acc' is 'high', expected a finite number or null"):
        read_metrics(path)
    path.write_text(json.dumps({"accuracy": 71.5}))  # the names before eval.json had a test section
    with pytest.raises(DataError, match="no 'test' object of metrics"):
        read_metrics(path)
    path.write_text(json.dumps({"test": METRICS, "tte": True}))
    assert read_metrics(path) == {**METRICS, "tte": True, "tte_expand": None}
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object"):
        read_metrics(path)
    with pytest.raises(DataError, match="metrics file not found"):
        read_metrics(tmp_path / "missing.json")


# --- registering under dvc repro -----------------------------------------------------

DVC_YAML = {
    "stages": {
        "train": {
            "cmd": "python make_model.py",
            "deps": ["make_model.py"],
            "outs": ["data/model/adapter.pt"],
        },
        "evaluate": {
            "cmd": "python -c \"import shutil, pathlib; pathlib.Path('data/metrics').mkdir(parents=True, "
            "exist_ok=True); shutil.copy('metrics.json', 'data/metrics/eval.json')\"",
            "deps": ["metrics.json", "data/model/adapter.pt"],
            "metrics": [{"data/metrics/eval.json": {"cache": False}}],
        },
        "register": {
            "cmd": "python -m stages.register",
            "deps": ["data/model/adapter.pt", "data/metrics/eval.json"],
            "params": ["register"],
            "outs": [{"data/registry/registration.json": {"cache": False}}],
        },
    },
    "artifacts": {NAME: {"path": "data/model/adapter.pt", "type": "model"}},
}
MAKE_MODEL = """\
from liftplus.model.build import ModelConfig, build_model
from liftplus.model.checkpoint import save_checkpoint
save_checkpoint("data/model/adapter.pt", build_model(ModelConfig(num_classes=3)))
"""


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=offline_env(), capture_output=True, text=True)
    if check and result.returncode:
        raise AssertionError(f"{args} failed:\n{result.stdout}\n{result.stderr}")
    return result


def write_gate(repo: Path, **gate) -> None:
    params = {
        "register": {
            "name": NAME,
            "min_accuracy": 0,
            "min_mean_class_accuracy": 0,
            "min_few_accuracy": None,
            "stage": "staging",
            **gate,
        }
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def commit(repo: Path, message: str) -> None:
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-q", "-m", message], repo)


def tags(repo: Path) -> list[str]:
    return run(["git", "tag", "--list"], repo).stdout.split()


@pytest.fixture(scope="module")
def model_repo(tmp_path_factory) -> Path:
    """A DVC project whose `register` stage is the real one; first with a gate the model fails."""
    repo = tmp_path_factory.mktemp("registry") / "project"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "config", "user.name", "liftplus tests"], repo)
    run(["git", "config", "user.email", "tests@liftplus.invalid"], repo)
    run(["git", "config", "tag.gpgsign", "false"], repo)
    run([sys.executable, "-m", "dvc", "init", "-q"], repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "make_model.py").write_text(MAKE_MODEL)
    (repo / "metrics.json").write_text(json.dumps({"test": METRICS, "tte": True}))
    write_gate(repo, min_accuracy=90)
    commit(repo, "project")
    return repo


@pytest.mark.slow
def test_failed_gate_registers_nothing_and_passing_gate_creates_the_tag(model_repo):
    repo = model_repo
    failed = run([sys.executable, "-m", "dvc", "repro"], repo, check=False)
    assert failed.returncode != 0
    assert "error: register gate: acc 71.50 < register.min_accuracy 90" in failed.stdout + failed.stderr
    assert tags(repo) == []
    assert not (repo / "data/registry/registration.json").exists()

    write_gate(repo, min_accuracy=70, min_few_accuracy=None)
    commit(repo, "gate at 70")
    run([sys.executable, "-m", "dvc", "repro"], repo)
    head = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    assert sorted(tags(repo)) == [f"{NAME}#staging#1", f"{NAME}@v0.0.1"]
    assert run(["git", "rev-list", "-n1", f"{NAME}@v0.0.1"], repo).stdout.strip() == head

    model_md5 = hashlib.md5((repo / "data/model/adapter.pt").read_bytes()).hexdigest()
    message = json.loads(run(["git", "tag", "-l", "--format=%(contents)", f"{NAME}@v0.0.1"], repo).stdout)
    assert message == {
        "path": "data/model/adapter.pt",
        "md5": model_md5,
        "metrics": {**METRICS, "tte": True, "tte_expand": None},
    }
    record = json.loads((repo / "data/registry/registration.json").read_text())
    assert record["registered"] is True
    assert (record["version"], record["stages"], record["md5"], record["git_sha"]) == (
        "v0.0.1",
        ["staging"],
        model_md5,
        head,
    )


@pytest.mark.slow
def test_models_lists_the_registered_version(model_repo):
    app = typer.Typer()
    app.command()(models)
    result = CliRunner().invoke(app, ["--json", "--repo", str(model_repo)])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert [(v["name"], v["version"], v["stages"]) for v in listed] == [(NAME, "v0.0.1", ["staging"])]
    assert listed[0]["metrics"] == {**METRICS, "tte": True, "tte_expand": None}

    table = CliRunner().invoke(app, ["--repo", str(model_repo)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "v0.0.1" in table.stdout and "staging" in table.stdout and "71.50" in table.stdout


@pytest.mark.slow
@pytest.mark.parametrize("reference", ["v0.0.1", f"{NAME}@v0.0.1", "staging", f"{NAME}#staging", "latest"])
def test_resolve_model_finds_the_cached_file(model_repo, reference):
    path = resolve_model(reference, repo=model_repo)
    expected_md5 = hashlib.md5((model_repo / "data/model/adapter.pt").read_bytes()).hexdigest()
    assert path == model_repo / ".dvc/cache/files/md5" / expected_md5[:2] / expected_md5[2:]
    assert hashlib.md5(path.read_bytes()).hexdigest() == expected_md5


@pytest.mark.slow
def test_resolve_model_errors_name_the_version(model_repo):
    given = model_repo / "data/model/adapter.pt"
    assert resolve_model(given, repo=model_repo) == given
    with pytest.raises(CheckpointError, match=f"model 'v0.0.2': {NAME} has no version v0.0.2 \\(registered: v0.0.1\\)"):
        resolve_model("v0.0.2", repo=model_repo)
    with pytest.raises(CheckpointError, match="no version of .* is in stage 'prod'"):
        resolve_model("prod", repo=model_repo)
    with pytest.raises(CheckpointError, match="missing/adapter.pt: model file not found"):
        resolve_model("missing/adapter.pt", repo=model_repo)


@pytest.mark.slow
def test_registering_again_on_the_same_commit(model_repo, monkeypatch):
    monkeypatch.chdir(model_repo)
    version, created = register_model(NAME, "data/model/adapter.pt", METRICS, "staging")
    assert (version.version, created) == ("v0.0.1", False)
    assert len(tags(model_repo)) == 2, "the same model again: no new tag"

    other = model_repo / "other.pt"
    other.write_bytes(b"another model")
    with pytest.raises(LiftplusError, match="already has liftplus-classifier@v0.0.1 for another model"):
        register_model(NAME, other, METRICS, "staging")
    assert [v.version for v in registered_versions(model_repo)] == ["v0.0.1"]
