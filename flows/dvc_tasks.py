"""Run DVC commands for Prefect tasks.

Every line DVC (or a stage it runs) prints goes to the Prefect run logger as it
arrives. A failed command becomes :class:`DvcCommandFailed`, classified as
*transient* (worth a retry: a signal, an I/O error, DVC's repo lock held by
another process) or *permanent* (our stages' ``error: ...`` convention for bad
params, data or validation; DVC rejecting the pipeline itself), so that a
task's ``retry_condition_fn`` can retry only what a retry can fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liftplus import offline

STAGE_ERROR_PREFIX = "error: "
"""How a liftplus stage reports a problem the user must fix (``liftplus.errors.exit_on_error``)."""

_RAN = re.compile(r"^Running stage '(?P<stage>[^']+)':")
_UP_TO_DATE = re.compile(r"^Stage '(?P<stage>[^']+)' didn't change, skipping")
_RESTORED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run")
_STAGE_EXIT = re.compile(r"failed to run: .*, exited with (?P<code>-?\d+)\s*$")
_FAILED_STAGE = re.compile(r"failed to reproduce '(?P<stage>[^']+)'")
_EXPERIMENT = re.compile(r"^(?:Reproducing|Queued) experiment '(?P<name>[^']+)'")

LOCK_HELD = "Unable to acquire lock"
TRANSIENT_TEXT = re.compile(
    "|".join(
        [
            re.escape(LOCK_HELD),
            r"is busy, it is being blocked by",
            r"Input/output error",
            r"Resource temporarily unavailable",
            r"Stale file handle",
            r"Broken pipe",
            r"Connection (?:reset|refused|aborted)",
            r"Temporary failure",
            r"timed out",
            r"^error: (?:OSError|BlockingIOError|InterruptedError|TimeoutError|"
            r"ConnectionError|ConnectionResetError|ConnectionAbortedError|BrokenPipeError):",
        ]
    ),
    re.IGNORECASE | re.MULTILINE,
)

RAN = "ran"
UP_TO_DATE = "up to date"
RESTORED = "restored from run cache"


class DvcCommandFailed(RuntimeError):
    """A DVC command exited non-zero; ``transient`` says whether retrying may help.

    ``message`` is one line; for a stage that reported bad input it is the
    stage's own ``error: ...`` line, unchanged.
    """

    def __init__(self, command: Sequence[str], returncode: int, message: str, transient: bool):
        self.command = tuple(command)
        self.returncode = returncode
        self.message = message
        self.transient = transient
        super().__init__(message)

    def __reduce__(self):  # Prefect may copy a failed state's data
        return type(self), (self.command, self.returncode, self.message, self.transient)


def error_line(failure: BaseException) -> str:
    """A failure as the one line the project prints for it: ``error: ...``."""
    message = getattr(failure, "message", None) or str(failure)
    return message if message.startswith(STAGE_ERROR_PREFIX) else STAGE_ERROR_PREFIX + message


def failed_state(failure: BaseException, message: str | None = None) -> Any:
    """A Prefect ``Failed`` state whose result re-raises ``failure``: a task or flow returns
    it instead of raising, so Prefect logs no traceback for a failure we expected and
    already explained. Its message is ``message``, by default the failure's one line."""
    from prefect.states import Failed

    return Failed(message=message or error_line(failure), data=failure)


class QuietExpectedFailures(logging.Filter):
    """Drop the traceback Prefect attaches to its log line about an expected failure.

    Prefect's engines log "Task run failed with ..." and "Encountered exception
    during execution" with ``exc_info``; for a :class:`DvcCommandFailed` (its
    one line is the whole story) or a returned Failed state (no exception at all,
    which would print ``NoneType: None``) the line stays and the traceback goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and (record.exc_info[1] is None or isinstance(record.exc_info[1], DvcCommandFailed)):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_expected_failures(loggers: Iterable[str] = ("prefect.task_runs", "prefect.flow_runs")) -> None:
    """Install :class:`QuietExpectedFailures` on Prefect's run loggers (once)."""
    for name in loggers:
        logger = logging.getLogger(name)
        if not any(isinstance(f, QuietExpectedFailures) for f in logger.filters):
            logger.addFilter(QuietExpectedFailures())


@dataclass(frozen=True)
class DvcResult:
    command: tuple[str, ...]
    returncode: int
    output: str
    """stdout, or stdout and stderr interleaved when they were merged."""


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The current Prefect run's logger, or a plain one outside a flow or task."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("liftplus.flows")


def dvc_env() -> dict[str, str]:
    """The environment for DVC and the stage commands it starts.

    The running interpreter's bin directory goes first on PATH, so a stage's
    ``python -m stages.x`` uses this virtual environment even when it was not
    activated (as under a Prefect worker).
    """
    env = offline.environment(PYTHONUNBUFFERED="1")
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, env.get("PATH", "")])
    return env


def dvc_command(args: Iterable[str]) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def run_dvc(args: Sequence[str], repo: str | Path = ".", *, merge_stderr: bool = True) -> DvcResult:
    """Run ``dvc ARGS`` in ``repo``, logging every line; raise DvcCommandFailed on failure.

    With ``merge_stderr=False`` (for ``--json`` commands) only stdout is returned;
    stderr is still logged.
    """
    logger = run_logger()
    command = dvc_command(args)
    shown = "dvc " + " ".join(args)
    logger.info("$ %s", shown)
    process = subprocess.Popen(
        command,
        cwd=repo,
        env=dvc_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    if merge_stderr:
        lines = []
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip("\n")
            lines.append(line)
            _log_line(logger, line)
        returncode = process.wait()
        output = "\n".join(lines)
        diagnostics = output
    else:
        output, stderr = process.communicate()
        returncode = process.returncode
        for line in stderr.splitlines():
            _log_line(logger, line)
        diagnostics = stderr
    if returncode != 0:
        failure = classify_failure(returncode, diagnostics, shown)
        if failure.transient:
            logger.error("%s failed (transient, may be retried): %s", shown, failure.message)
        else:  # its one line is already in the log, as the stage or DVC printed it
            logger.error("%s failed, not retried", shown)
        raise failure
    return DvcResult(tuple(command), returncode, output)


@contextmanager
def dvc_api(repo: str | Path, what: str) -> Iterator[Any]:
    """DVC's Python API (``dvc.repo.Repo``) on ``repo``, for ``what`` (named in a failure).

    Structured answers instead of DVC's human-readable output, and no process to
    start. DVC's lock held by another process is a transient failure; any other
    DVC error (an invalid dvc.yaml, say) is permanent.
    """
    from dvc.exceptions import DvcException
    from dvc.lock import LockError
    from dvc.repo import Repo

    try:
        with Repo(str(repo)) as opened:
            yield opened
    except LockError:
        raise lock_held_failure(f"dvc {what}") from None
    except DvcException as exc:
        raise DvcCommandFailed(("dvc", what), 1, f"dvc {what}: {exc}", False) from None


def _stage_key(stage: Any) -> str:
    return getattr(stage, "name", None) or str(stage.addressing)


def stale_stages(repo: str | Path) -> dict[str, list[str]]:
    """``{stage: [stages among it and its upstream that are not up to date]}`` for every stage.

    One ``dvc status`` over the whole project, through DVC's API: a stage whose
    list is empty is up to date and ``dvc repro`` on it would do nothing. A
    stage's own status misses a change still upstream (train looks clean until
    shard has rerun), hence the upstream stages in each list.
    """
    import networkx as nx

    with dvc_api(repo, "status") as dvc_repo:
        changed = set(dvc_repo.status())
        graph = dvc_repo.index.graph
        stale = {stage for stage in graph.nodes if stage.addressing in changed}
        return {
            _stage_key(stage): sorted(_stage_key(s) for s in ({stage} | nx.descendants(graph, stage)) if s in stale)
            for stage in graph.nodes
        }


def workspace_metrics(repo: str | Path) -> dict[str, Any]:
    """The workspace's metrics as ``{"file:key": value}`` (``dvc metrics show``, through DVC's API)."""
    with dvc_api(repo, "metrics show") as dvc_repo:
        return flatten_metrics((dvc_repo.metrics.show().get("") or {}).get("data"))


def run_dvc_json(args: Sequence[str], repo: str | Path = ".") -> Any:
    """Run a ``dvc ... --json`` command and parse its stdout."""
    result = run_dvc([*args, "--json"], repo, merge_stderr=False)
    try:
        return json.loads(result.output or "null")
    except json.JSONDecodeError as exc:
        message = f"dvc {' '.join(args)}: output is not JSON ({exc})"
        raise DvcCommandFailed(result.command, 0, message, False) from None


def _log_line(logger: logging.Logger | logging.LoggerAdapter, line: str) -> None:
    if line.startswith((STAGE_ERROR_PREFIX, "ERROR:")):
        logger.error("%s", line)
    elif line.strip():
        logger.info("%s", line)


def lock_held_failure(command: str, returncode: int = 1) -> DvcCommandFailed:
    """DVC's repo lock is held by another process (a second ``dvc repro``): worth a retry."""
    return DvcCommandFailed(command.split(), returncode, f"{command}: the DVC lock is held by another process", True)


def classify_failure(returncode: int, output: str, command: str = "dvc") -> DvcCommandFailed:
    """Decide whether a failed DVC command is worth retrying, and say why in one line.

    Permanent: a stage exited 1 after printing ``error: ...`` (params, data or
    validation; retrying gives the same answer), or DVC refused before running
    any command (invalid dvc.yaml, missing dependency). Transient: a stage or DVC
    killed by a signal, I/O or network errors, DVC's lock held by another process.
    Any other stage failure (a crash without our ``error:`` line) is retried.
    """
    lines = output.splitlines()
    stage_exits = [int(m["code"]) for line in lines if (m := _STAGE_EXIT.search(line))]
    stage_exit = stage_exits[-1] if stage_exits else None
    failed = [m["stage"] for line in lines if (m := _FAILED_STAGE.search(line))]
    where = f"stage '{failed[-1]}'" if failed else command
    stage_errors = [line for line in lines if line.startswith(STAGE_ERROR_PREFIX)]
    dvc_errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    last_words = dvc_errors[-1] if dvc_errors else (lines[-1] if lines else f"exit status {returncode}")

    def failure(message: str, transient: bool) -> DvcCommandFailed:
        return DvcCommandFailed(command.split(), returncode, message, transient)

    if LOCK_HELD in output:
        return lock_held_failure(command, returncode)
    killed = returncode < 0 or (stage_exit is not None and (stage_exit < 0 or stage_exit > 128))
    if killed:
        code = stage_exit if stage_exit is not None else returncode
        return failure(f"{where} was killed (exit status {code}): {last_words}", True)
    transient_text = TRANSIENT_TEXT.search(output)
    if transient_text:
        return failure(f"{where} failed with an I/O error: {transient_text.group(0).strip()}", True)
    if stage_errors and stage_exit in (1, None):
        return failure(stage_errors[0], False)
    if stage_exit is None:
        return failure(f"{command} failed: {last_words}", False)
    return failure(f"{where} failed (exit status {stage_exit}): {last_words}", True)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only failures a retry can fix."""
    try:
        state.result()
    except DvcCommandFailed as exc:
        return exc.transient
    except Exception:
        return True
    return False


def stage_outcomes(output: str) -> dict[str, str]:
    """What ``dvc repro`` / ``dvc exp run`` did to each stage, in the order it said so."""
    outcomes: dict[str, str] = {}
    for line in output.splitlines():
        for pattern, outcome in ((_RAN, RAN), (_UP_TO_DATE, UP_TO_DATE), (_RESTORED, RESTORED)):
            match = pattern.match(line.strip())
            if match:
                outcomes[match["stage"]] = outcome
    return outcomes


def experiment_names(output: str) -> list[str]:
    """Experiment names from ``dvc exp run`` output (reproduced or queued), in order, unique."""
    names: list[str] = []
    for line in output.splitlines():
        match = _EXPERIMENT.match(line.strip())
        if match and match["name"] not in names:
            names.append(match["name"])
    return names


def flatten_metrics(metrics_by_file: dict[str, Any] | None) -> dict[str, Any]:
    """``{"file": {"data": {"a": {"b": 1}}}}`` → ``{"file:a.b": 1}`` (DVC's JSON metrics layout)."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            flat[prefix] = value

    for file, entry in (metrics_by_file or {}).items():
        data = entry.get("data") if isinstance(entry, dict) else None
        if isinstance(data, dict):
            for key, value in data.items():
                walk(f"{file}:{key}", value)
    return flat


def format_override(key: str, value: Any) -> str:
    """One ``-S`` argument: ``key=value`` with the value written so DVC parses it back as given."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.+\-/]+", value):
        text = value
    else:
        text = json.dumps(value)
    return f"{key}={text}"


def set_param_args(overrides: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in overrides.items():
        args += ["-S", format_override(key, value)]
    return args
