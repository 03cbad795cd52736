"""Serve the scheduled deployment against the temporary local API, trigger one run, see it complete."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakeproject import stage_calls
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment

from flows.pipeline import STAGES
from flows.serve import DEFAULT_CRON, DEPLOYMENT_NAME

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENT = f"liftplus-pipeline/{DEPLOYMENT_NAME}"


def wait_for_deployment(server: subprocess.Popen, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise AssertionError(f"flows.serve exited with {server.returncode}")
            try:
                return client.read_deployment_by_name(DEPLOYMENT)
            except Exception:
                time.sleep(0.5)
    raise AssertionError(f"deployment {DEPLOYMENT} did not appear within {timeout:.0f} s")


@pytest.mark.slow
def test_served_deployment_runs_when_triggered(prefect_api, fake_project, tmp_path):
    env = dict(
        os.environ,
        PREFECT_API_URL=prefect_api,
        PREFECT_RUNNER_POLL_FREQUENCY="1",
        PYTHONPATH=os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")]),
    )
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "flows.serve", "--repo", str(fake_project)],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deployment = wait_for_deployment(server)
        crons = [s.schedule.cron for s in deployment.schedules]
        assert crons == [DEFAULT_CRON] and deployment.parameters["repo"] == str(fake_project)

        flow_run = run_deployment(DEPLOYMENT, parameters={"retry_delay_seconds": [0]}, timeout=120)
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "serve.log").read_text()[-3000:])
        assert stage_calls() == list(STAGES)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
