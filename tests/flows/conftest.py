"""Fixtures for the flow tests: one temporary Prefect API for the session, and a
small fake DVC project (a temp git repo whose six stages are tiny python commands)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from liftplus import offline

# Before anything imports prefect: offline, and no state outside temp dirs.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="liftplus-prefect-home-"))
offline.apply()
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

import pytest  # noqa: E402  (after the environment above: importing it may import prefect)
from fakeproject import make_fake_project  # noqa: E402


@pytest.fixture(scope="session")
def fake_project_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_fake_project(tmp_path_factory.mktemp("template") / "project")


@pytest.fixture
def fake_project(fake_project_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the committed fake DVC project; ``$FAKE_STATE_DIR/calls.log``
    records each stage call."""
    repo = tmp_path / "project"
    shutil.copytree(fake_project_template, repo, symlinks=True)
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("FAKE_STATE_DIR", str(state))
    return repo


@pytest.fixture(scope="session")
def prefect_api() -> str:
    """One temporary Prefect server (SQLite in a temp dir) shared by the session; its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield PREFECT_API_URL.value()
