"""Serve the pipeline as a scheduled Prefect deployment (daily at 03:00 UTC by default).

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1: a local API + UI
    export PREFECT_API_URL=http://127.0.0.1:4200/api           # terminal 2 (and 3):
    python -m flows.serve                                       # registers + serves "liftplus-daily"
    prefect deployment run liftplus-pipeline/liftplus-daily     # terminal 3: one run now

``flow.serve`` needs no work pool or worker: this process polls the API for due
runs (its schedule, or a run triggered by hand) and executes each in a
subprocess, one at a time (two DVC pipelines in one repo would fight over its
lock). Stop it with Ctrl+C, which also pauses the schedule.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.schedules import Cron

from flows.pipeline import liftplus_pipeline

DEPLOYMENT_NAME = "liftplus-daily"
DEFAULT_CRON = "0 3 * * *"
DEFAULT_TIMEZONE = "UTC"


def serve(
    name: str = DEPLOYMENT_NAME,
    cron: str = DEFAULT_CRON,
    timezone: str = DEFAULT_TIMEZONE,
    repo: str = ".",
) -> None:
    """Register the deployment (its runs use ``repo`` as resolved now) and serve it until stopped."""
    liftplus_pipeline.serve(
        name=name,
        schedules=[Cron(cron, timezone=timezone)],
        parameters={"repo": str(Path(repo).resolve())},
        description="Bring the liftplus DVC pipeline up to date (dvc repro, stage by stage).",
        tags=["liftplus"],
        limit=1,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default=DEPLOYMENT_NAME, help=f"deployment name (default: {DEPLOYMENT_NAME})")
    parser.add_argument("--cron", default=DEFAULT_CRON, help=f"schedule (default: '{DEFAULT_CRON}')")
    parser.add_argument("--timezone", default=DEFAULT_TIMEZONE, help="time zone of the schedule (default: UTC)")
    parser.add_argument("--repo", default=".", help="DVC project the runs work in (default: .)")
    args = parser.parse_args(argv)
    serve(name=args.name, cron=args.cron, timezone=args.timezone, repo=args.repo)


if __name__ == "__main__":
    main()
