"""Stages as background processes, and a stage held still at a chosen call, for signals and races.

A test that kills a stage "in the middle of writing" or starts a second run "while
the first holds its outputs" must not depend on how fast this machine is. A
paused stage is the real ``python -m stages.<name>`` (same main, same signal
handling) with one library function wrapped: its first call touches a ``ready``
file, then waits for a ``go`` file (forever when the test never creates it)
before doing its work.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from faultkit import Outcome, stage_env, train_args  # noqa: F401 (the fault tests import it from here too)

from bench.common import REPO

_PAUSE_AT = """
import importlib, runpy, sys, time
from pathlib import Path

module_name, attribute, ready, go = sys.argv[1:5]
del sys.argv[1:5]
owner = importlib.import_module(module_name)
*path, name = attribute.split(".")
for part in path:
    owner = getattr(owner, part)
original = getattr(owner, name)
paused = []

def pause_then_call(*args, **kwargs):
    if not paused:
        paused.append(True)
        Path(ready).touch()
        while not Path(go).exists():
            time.sleep(0.05)
    return original(*args, **kwargs)

setattr(owner, name, pause_then_call)
sys.argv[0] = "stages." + sys.argv.pop(1)
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


class Background:
    """A command in its own process group, its output in files (no pipe to fill up)."""

    def __init__(self, cmd: list[str], cwd: Path, logs: Path, name: str):
        logs.mkdir(parents=True, exist_ok=True)
        self.out_path, self.err_path = logs / f"{name}.out", logs / f"{name}.err"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=stage_env(), stdout=out, stderr=err, start_new_session=True)

    def wait(self, timeout: float = 300) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def outcome(self) -> Outcome:
        """Once ended: what :func:`faultkit.assert_one_line_error` and friends check."""
        return Outcome(self.proc.returncode, self.stdout, self.stderr)

    def until(self, condition, timeout: float = 240, what: str = "condition") -> None:
        """Poll ``condition`` every 20 ms; fail if the process ends first."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"ended (exit {self.proc.returncode}) before {what}\n{self.stdout[-2000:]}\n{self.stderr[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.02)


class PausedStage(Background):
    """``python -m stages.<stage> args...`` that stops at the first call of ``target``
    (``"module:attribute.path"``) until :meth:`go`; :attr:`ready` once it got there."""

    def __init__(self, stage: str, target: str, *args: object, workdir: Path, name: str | None = None):
        name = name or stage
        module, attribute = target.split(":")
        self.ready_path, self.go_path = workdir / f"{name}.ready", workdir / f"{name}.go"
        command = [
            sys.executable,
            "-c",
            _PAUSE_AT,
            module,
            attribute,
            str(self.ready_path),
            str(self.go_path),
            stage,
            *map(str, args),
        ]
        super().__init__(command, REPO, workdir / "logs", name)

    def wait_until_paused(self, timeout: float = 240) -> None:
        self.until(self.ready_path.exists, timeout, what=f"the pause at {self.ready_path.stem}")

    def go(self) -> None:
        self.go_path.touch()

    def meanwhile(self, action):
        """Run ``action`` while the stage is paused, then let the stage finish: ``(action's result, exit status)``."""
        try:
            self.wait_until_paused()
            result = action()
            self.go()
            return result, self.wait()
        finally:
            self.kill()
