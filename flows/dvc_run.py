"""``python flows/dvc_run.py REPORT ARGS...``: ``dvc ARGS`` as the ``dvc`` command runs it, and a
report of what it did that owes nothing to the wording of DVC's messages.

Everything DVC prints is printed as usual (the caller relays it to the log). Besides, REPORT
(a JSON file) receives, whatever dvc returned:

- ``stage_runs``: every stage command DVC started, in order: stage, start and end time (epoch
  seconds), exit status. DVC starts each with ``DVC_STAGE=<stage>`` in its environment (a
  documented variable), which is how this process tells them from any other child process.
  A stage with no entry did not run its command: up to date, or restored from the run cache.
- ``lock_held``: whether dvc failed because its repo lock (or a stage's read/write lock) is
  held by another process, recognised by the exception's type, ``dvc.lock.LockError``.

Started as a script, not with ``-m``: the stage commands inherit no change to the
environment or sys.path, and the script imports nothing but the standard library and dvc.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from typing import Any

STAGE_ENV = "DVC_STAGE"
"""Set by DVC for every stage command it starts: the stage's address (``train``)."""

stage_runs: list[dict[str, Any]] = []
logged_errors: list[BaseException] = []


class StageCommand(subprocess.Popen):
    """``subprocess.Popen`` that records the processes DVC starts for a stage's command."""

    def __init__(self, args: Any, *more: Any, **kwargs: Any) -> None:
        env = kwargs.get("env")
        self._stage_run: dict[str, Any] | None = None
        started = time.time()
        super().__init__(args, *more, **kwargs)
        if env and env.get(STAGE_ENV):
            self._stage_run = {"stage": env[STAGE_ENV], "started": started, "ended": None, "returncode": None}
            stage_runs.append(self._stage_run)

    def wait(self, timeout: float | None = None) -> int:
        returncode = super().wait(timeout)
        if self._stage_run is not None and self._stage_run["ended"] is None:
            self._stage_run.update(ended=time.time(), returncode=returncode)
        return returncode


class ErrorCollector(logging.Handler):
    """Keeps the exception of every record DVC logs with one (its CLI logs the one that ends it)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            logged_errors.append(record.exc_info[1])


def exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def report(returncode: int) -> dict[str, Any]:
    from dvc.lock import LockError

    for run in stage_runs:  # a process DVC did not wait for (interrupted): its status if it has one
        if run["returncode"] is None:
            run["ended"] = time.time()
    causes = [cause for exc in logged_errors for cause in exception_chain(exc)]
    return {
        "returncode": returncode,
        "stage_runs": stage_runs,
        "lock_held": any(isinstance(cause, LockError) for cause in causes),
    }


def main(argv: list[str]) -> int:
    if not argv:
        sys.exit("usage: dvc_run.py REPORT [DVC ARGS...]")
    report_path, args = argv[0], argv[1:]
    subprocess.Popen = StageCommand  # type: ignore[misc]  # this process exists to run one dvc command
    logging.getLogger("dvc").addHandler(ErrorCollector())
    from dvc.cli import main as dvc_main

    returncode = 255
    try:
        returncode = dvc_main(args)
    finally:
        with open(report_path, "w") as file:
            json.dump(report(returncode), file)
    return returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
