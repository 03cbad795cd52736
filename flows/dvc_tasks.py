"""Run DVC commands for Prefect tasks.

Every line DVC (or a stage it runs) prints goes to the Prefect run logger as it
arrives; that is all DVC's prose is used for. What the flows decide or report
comes from structure: each command runs through ``flows/dvc_run.py``, which
records the stage commands DVC starts (stage, times, exit status) and whether
DVC's lock stopped it (by exception type); what a stage's outcome was comes from
those records, the stage's entry in ``dvc.lock`` before and after, and a ``dvc
status`` through DVC's Python API; experiment names are chosen by the flows
(``--name``), never read back. A DVC release that rewords its messages changes
the log, not a decision.

A failed command becomes :class:`DvcCommandFailed`, classified as *transient*
(worth a retry: a signal, an I/O error, DVC's repo lock held by another process)
or *permanent* (our stages' ``error: ...`` convention for bad params, data or
validation; DVC rejecting the pipeline itself), so that a task's
``retry_condition_fn`` can retry only what a retry can fix.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from liftplus import offline

STAGE_ERROR_PREFIX = "error: "
"""How a liftplus stage reports a problem the user must fix (``liftplus.errors.exit_on_error``)."""

DVC_RUN = Path(__file__).with_name("dvc_run.py")
"""Runs one dvc command and reports its stage commands and a held lock as JSON (see its docstring)."""
LOCK_FILE = "dvc.lock"

TRANSIENT_TEXT = re.compile(
    # The operating system's words (strerror) and our stages' ``error: <Exception>:`` lines,
    # as a stage's output carries them; none of it is DVC's wording.
    "|".join(
        [
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
class StageRun:
    """One stage command DVC started (``flows/dvc_run.py`` records it): ``returncode`` None if it never ended."""

    stage: str
    started: float
    ended: float | None
    returncode: int | None


@dataclass(frozen=True)
class DvcResult:
    command: tuple[str, ...]
    returncode: int
    output: str
    """stdout, or stdout and stderr interleaved when they were merged."""
    stage_runs: tuple[StageRun, ...] = ()
    """The stage commands DVC started, in order."""


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


def dvc_command(args: Iterable[str], report: str | Path) -> list[str]:
    """``dvc ARGS`` through :data:`DVC_RUN`, which writes what happened to ``report``."""
    return [sys.executable, str(DVC_RUN), str(report), *args]


@dataclass(frozen=True)
class RunReport:
    stage_runs: tuple[StageRun, ...] = ()
    lock_held: bool = False


def read_report(path: Path) -> RunReport:
    """What ``flows/dvc_run.py`` wrote; empty if it wrote nothing (killed before dvc returned)."""
    try:
        data = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return RunReport()
    runs = tuple(
        StageRun(
            stage=str(run["stage"]).rpartition(":")[2],  # ``sub/dvc.yaml:train`` → ``train``, as dvc.lock keys it
            started=float(run["started"]),
            ended=None if run.get("ended") is None else float(run["ended"]),
            returncode=run.get("returncode"),
        )
        for run in data.get("stage_runs") or []
    )
    return RunReport(runs, bool(data.get("lock_held")))


def run_dvc(args: Sequence[str], repo: str | Path = ".", *, merge_stderr: bool = True) -> DvcResult:
    """Run ``dvc ARGS`` in ``repo``, logging every line; raise DvcCommandFailed on failure.

    With ``merge_stderr=False`` (for ``--json`` commands) only stdout is returned;
    stderr is still logged.
    """
    logger = run_logger()
    handle, report_name = tempfile.mkstemp(prefix="liftplus-dvc-", suffix=".json")
    os.close(handle)
    report_path = Path(report_name)
    command = dvc_command(args, report_path)
    shown = "dvc " + " ".join(args)
    logger.info("$ %s", shown)
    try:
        returncode, output, diagnostics = _run_logged(command, repo, merge_stderr, logger)
        report = read_report(report_path)
    finally:
        report_path.unlink(missing_ok=True)
    if returncode != 0:
        failure = classify_failure(returncode, diagnostics, shown, report.stage_runs, report.lock_held)
        if failure.transient:
            logger.error("%s failed (transient, may be retried): %s", shown, failure.message)
        else:  # its one line is already in the log, as the stage or DVC printed it
            logger.error("%s failed, not retried", shown)
        raise failure
    return DvcResult(("dvc", *args), returncode, output, report.stage_runs)


def _run_logged(
    command: list[str], repo: str | Path, merge_stderr: bool, logger: logging.Logger | logging.LoggerAdapter
) -> tuple[int, str, str]:
    """Run ``command``, logging each line as it comes; its exit status, output and diagnostics."""
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
    return returncode, output, diagnostics


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
    # Display only: the level a relayed line is logged at; nothing is decided from it.
    if line.startswith((STAGE_ERROR_PREFIX, "ERROR:")):
        logger.error("%s", line)
    elif line.strip():
        logger.info("%s", line)


def lock_held_failure(command: str, returncode: int = 1) -> DvcCommandFailed:
    """DVC's repo lock is held by another process (a second ``dvc repro``): worth a retry."""
    return DvcCommandFailed(command.split(), returncode, f"{command}: the DVC lock is held by another process", True)


def classify_failure(
    returncode: int,
    output: str,
    command: str = "dvc",
    stage_runs: Sequence[StageRun] = (),
    lock_held: bool = False,
) -> DvcCommandFailed:
    """Decide whether a failed DVC command is worth retrying, and say why in one line.

    ``stage_runs`` and ``lock_held`` are what ``flows/dvc_run.py`` recorded; ``output`` is
    only read for our stages' own ``error: ...`` lines, the OS's I/O error texts and the
    line quoted in the message. Permanent: a stage exited 1 after printing ``error: ...``
    (params, data or validation; retrying gives the same answer), or DVC refused before
    any stage command failed (invalid dvc.yaml, missing dependency). Transient: a stage
    or DVC killed by a signal, I/O or network errors, DVC's lock held by another process.
    Any other stage failure (a crash without our ``error:`` line) is retried.
    """
    lines = output.splitlines()
    failed = [run for run in stage_runs if run.returncode not in (0, None)]
    stage_exit = failed[-1].returncode if failed else None
    where = f"stage '{failed[-1].stage}'" if failed else command
    stage_errors = [line for line in lines if line.startswith(STAGE_ERROR_PREFIX)]
    # Display only: the words quoted after the decision, DVC's last ERROR line if any.
    dvc_errors = [line.removeprefix("ERROR:").strip() for line in lines if line.startswith("ERROR:")]
    last_words = dvc_errors[-1] if dvc_errors else (lines[-1] if lines else f"exit status {returncode}")

    def failure(message: str, transient: bool) -> DvcCommandFailed:
        return DvcCommandFailed(command.split(), returncode, message, transient)

    if lock_held:
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


def planned_stages(
    repo: str | Path, targets: Sequence[str] = (), single_item: bool = False
) -> tuple[list[str], set[str]]:
    """The stages ``dvc repro TARGETS`` (or ``dvc exp run TARGETS``) looks at, upstream first,
    and which of them are stale now: one read of the stage graph and one ``dvc status``,
    through DVC's API. No targets: every stage. ``single_item``: the targets alone."""
    import networkx as nx

    with dvc_api(repo, "status") as dvc_repo:
        graph = dvc_repo.index.graph
        order = {stage: index for index, stage in enumerate(graph.nodes)}
        by_key = {_stage_key(stage): stage for stage in graph.nodes}
        unknown = [target for target in targets if target not in by_key]
        if unknown:
            raise DvcCommandFailed(("dvc", "status"), 1, f"dvc.yaml has no stage {', '.join(unknown)}", False)
        chosen = {by_key[target] for target in targets} if targets else set(graph.nodes)
        if not single_item:
            chosen |= {upstream for stage in list(chosen) for upstream in nx.descendants(graph, stage)}
        changed = set(dvc_repo.status())
        plan = nx.lexicographical_topological_sort(graph.subgraph(chosen).reverse(copy=True), key=order.__getitem__)
        return [_stage_key(stage) for stage in plan], {_stage_key(s) for s in chosen if s.addressing in changed}


def lock_entries(text: str | None) -> dict[str, Any]:
    """``dvc.lock``'s ``stages`` mapping (DVC's documented lock file format); empty without one."""
    data = yaml.safe_load(text) if text else None
    return dict(data.get("stages") or {}) if isinstance(data, dict) else {}


def workspace_lock(repo: str | Path) -> dict[str, Any]:
    path = Path(repo) / LOCK_FILE
    return lock_entries(path.read_text() if path.is_file() else None)


def git_head(repo: str | Path) -> str:
    """The commit HEAD points at: the baseline of an experiment started now."""
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{repo}: experiments need a git repository with a commit ({result.stderr.strip()})")
    return result.stdout.strip()


def experiment_lock(repo: str | Path, baseline: str, name: str) -> dict[str, Any]:
    """The ``dvc.lock`` an experiment committed (its git ref, as DVC names it from baseline and name)."""
    from dvc.repo.experiments.refs import ExpRefInfo

    ref = str(ExpRefInfo(baseline_sha=baseline, name=name))
    result = subprocess.run(["git", "show", f"{ref}:{LOCK_FILE}"], cwd=repo, capture_output=True, text=True)
    if result.returncode != 0:
        raise DvcCommandFailed(
            ("git", "show"), result.returncode, f"experiment {name!r}: no {LOCK_FILE} at {ref}", False
        )
    return lock_entries(result.stdout)


def stage_outcomes(
    plan: Sequence[str],
    stage_runs: Sequence[StageRun],
    lock_before: dict[str, Any],
    lock_after: dict[str, Any],
    stale_before: Iterable[str] = (),
) -> dict[str, str]:
    """What ``dvc repro`` / ``dvc exp run`` did to each planned stage, from structure alone.

    Ran: DVC started the stage's command. Restored from run cache: it did not, yet the
    stage's lock entry changed, or the stage was stale before (outputs checked out again).
    Up to date: neither.
    """
    ran = {run.stage for run in stage_runs}
    stale = set(stale_before)
    outcomes: dict[str, str] = {}
    for stage in plan:
        if stage in ran:
            outcomes[stage] = RAN
        elif stage in stale or lock_after.get(stage) != lock_before.get(stage):
            outcomes[stage] = RESTORED
        else:
            outcomes[stage] = UP_TO_DATE
    return outcomes


def stage_seconds(stage_runs: Sequence[StageRun], stage: str, end: float) -> float | None:
    """From the stage's command starting to the next stage's (or ``end``): the command and DVC
    saving its outputs. None if its command did not run."""
    for index, run in enumerate(stage_runs):
        if run.stage == stage:
            later = [r.started for r in stage_runs[index + 1 :] if r.stage != stage]
            return (later[0] if later else end) - run.started
    return None


EXPERIMENT_NAME_LENGTH = 60


def name_part(text: Any) -> str:
    """``text`` in the letters an experiment name keeps: a-z, 0-9, ``.``, ``_``, ``-`` (``+`` → ``plus``)."""
    text = str(text).lower().replace("+", "plus")
    text = re.sub(r"[^a-z0-9._]+", "-", text)
    return re.sub(r"\.{2,}", ".", text).strip("-._")


def experiment_base_name(prefix: str, parts: Iterable[Any] = ()) -> str:
    """``prefix-part-part`` as a valid experiment name: git's ref rules (no ``..``, no trailing
    ``.`` or ``.lock``, no ``/``, no spaces), at most :data:`EXPERIMENT_NAME_LENGTH` characters."""
    name = "-".join(p for p in map(name_part, (prefix, *parts)) if p)[:EXPERIMENT_NAME_LENGTH].strip("-._")
    while name.endswith(".lock"):
        name = name.removesuffix(".lock").strip("-._")
    return name or "exp"


def override_parts(overrides: dict[str, Any]) -> list[str]:
    """``{"train.lr": 0.01}`` → ``["lr_0.01"]``: the last key segment and the value as ``-S`` writes it."""
    return [
        f"{key.rpartition('.')[2]}_{format_override(key, value).partition('=')[2]}" for key, value in overrides.items()
    ]


def new_experiment_names(repo: str | Path, bases: Sequence[str]) -> list[str]:
    """One unused experiment name per base name: the base itself, else ``base-2``, ``base-3``...

    Used: every experiment's name in the repo (any baseline) and every queued one's, read
    through DVC's API; each name is checked with DVC's own rule (``check_ref_format``). The
    flows pass these to ``dvc exp run --name``, so they never read a name back from DVC's output.
    """
    from dvc.repo.experiments.refs import ExpRefInfo
    from dvc.repo.experiments.utils import check_ref_format, exp_refs

    with dvc_api(repo, "exp list") as dvc_repo:
        scm = dvc_repo.scm
        taken = {ref.name for ref in exp_refs(scm)}
        taken |= {entry.name for entry in dvc_repo.experiments.celery_queue.stash.stash_revs.values() if entry.name}
        baseline = scm.get_rev()
        names: list[str] = []
        for base in bases:
            name, number = base, 1
            while name in taken:
                number += 1
                name = f"{base}-{number}"
            check_ref_format(scm, ExpRefInfo(baseline_sha=baseline, name=name))
            taken.add(name)
            names.append(name)
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
