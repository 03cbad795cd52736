"""A small fake DVC project for the flow tests: a temp git repo whose six stages
(shard ... register) are tiny python commands (fake_stage.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

FAKE_STAGE = Path(__file__).with_name("fake_stage.py")
STAGE_OUTS = {
    "shard": ["data/shards/manifest.json"],
    "validate": [],
    "init_head": ["data/head/text_init.pt"],
    "train": ["data/model/adapter.pt"],
    "evaluate": [],
    "register": ["data/registry/registration.json"],
}
STAGE_DEPS = {
    "shard": [],
    "validate": ["data/shards/manifest.json"],
    "init_head": ["data/shards/manifest.json"],
    "train": ["data/shards/manifest.json", "data/stats/longtail.json", "data/head/text_init.pt"],
    "evaluate": ["data/model/adapter.pt"],
    "register": ["data/model/adapter.pt", "data/metrics/eval.json"],
}
STAGE_PARAMS = {
    "shard": ["data.seed"],
    "validate": ["fake.fail_validate"],
    "train": ["train.lr", "train.loss", "fake.flaky_train"],
    "evaluate": ["train.lr", "train.loss", "evaluate.tte"],
    "register": ["register"],
}
FAKE_PARAMS = {
    "data": {"seed": 0},
    "train": {"lr": 0.02, "loss": "la"},
    "evaluate": {"tte": True},
    "register": {"name": "fake-classifier", "min_accuracy": 0, "stage": "staging"},
    "fake": {"fail_validate": False, "flaky_train": False},
}


def sh(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    return subprocess.run(args, cwd=cwd, env=env, check=check, capture_output=True, text=True)


def dvc(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh([sys.executable, "-m", "dvc", *args], repo, check=check)


def experiment_values(repo: Path, section: str, path: str, *keys: str) -> dict:
    """``name -> value`` of every experiment in ``dvc exp show --json``: ``section`` ("params" or
    "metrics") of file ``path``, then ``keys`` down into its data."""
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    values = {}
    for row in shown:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                value = rev["data"][section][path]["data"]
                for key in keys:
                    value = value[key]
                values[rev["name"]] = value
    return values


def git_repo(path: Path) -> Path:
    """An empty git repo with a local identity and DVC initialised, analytics off."""
    path.mkdir(parents=True, exist_ok=True)
    sh(["git", "init", "-q", "-b", "main"], path)
    sh(["git", "config", "user.name", "liftplus tests"], path)
    sh(["git", "config", "user.email", "tests@liftplus.invalid"], path)
    sh(["git", "config", "commit.gpgsign", "false"], path)
    sh(["git", "config", "tag.gpgsign", "false"], path)
    dvc(path, "init", "-q")
    with (path / ".dvc" / "config").open("a") as config:
        config.write("[core]\n    analytics = false\n    check_update = false\n")
    return path


def commit_all(repo: Path, message: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "commit", "-q", "-m", message], repo)


def fake_dvc_yaml() -> dict:
    stages = {}
    for stage, outs in STAGE_OUTS.items():
        spec: dict = {"cmd": f"python fake_stage.py {stage}", "deps": ["fake_stage.py", *STAGE_DEPS[stage]]}
        if stage in STAGE_PARAMS:
            spec["params"] = STAGE_PARAMS[stage]
        if outs:
            spec["outs"] = outs
        if stage == "validate":
            spec["metrics"] = [{"data/stats/longtail.json": {"cache": False}}]
        if stage == "evaluate":
            spec["metrics"] = [{"data/metrics/eval.json": {"cache": False}}]
            spec["plots"] = [{"data/metrics/per_class.csv": {"cache": False, "x": "train_count", "y": "accuracy"}}]
        stages[stage] = spec
    return {"stages": stages}


def write_params(repo: Path, **sections: dict) -> None:
    params = {key: dict(value) for key, value in FAKE_PARAMS.items()}
    for section, values in sections.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_fake_project(repo: Path) -> Path:
    """Create and commit the fake project in ``repo``."""
    git_repo(repo)
    shutil.copy(FAKE_STAGE, repo / "fake_stage.py")
    write_params(repo)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(fake_dvc_yaml(), sort_keys=False))
    (repo / ".gitignore").write_text("/dvc_plots/\n")
    commit_all(repo, "fake project")
    return repo


def stage_calls() -> list[str]:
    """Stages run so far, one entry per attempt, in order."""
    log = Path(os.environ["FAKE_STATE_DIR"]) / "calls.log"
    return log.read_text().split() if log.exists() else []
