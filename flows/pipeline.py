"""The daily pipeline as a Prefect flow: one task per DVC stage, DVC decides what runs.

First ONE ``dvc status`` over the whole project (DVC's Python API, in this
process) says which stages are stale; a stage whose upstream and itself are all
up to date is reported "up to date" without a task or a dvc process. Each other
stage is a task running ``dvc repro <stage>``: DVC compares deps, params and outs
with dvc.lock, runs the stage only if something changed (or restores it from the
run cache), and records the run in dvc.lock. Running the whole target rather
than ``--single-item`` also brings a stage's upstream up to date, so choosing
``stages=["evaluate"]`` can never evaluate a stale model. ``force=True`` uses
``--force --single-item`` so each stage reruns exactly once.

No-op cost (everything up to date; fake project of tests/flows on a shared
2-core machine, temporary Prefect API): ``dvc repro`` 0.6 s; this flow 12.8 s
before, 9.9 s after (quiet machine, one run each; under load, medians of 6 runs:
21 s before, 16.7 s after, ``dvc repro`` 1.0 s). The DVC part went from ~4.4 s
(a ``dvc repro`` process per stage, 6 × ~0.7 s, then ``dvc metrics show``) to
~0.7 s (one status and the metrics through DVC's API, no process). What is left
is Prefect's own: importing it (2-5 s), starting its temporary API server (4-8 s;
none with ``PREFECT_API_URL`` set to a running server) and stopping it (~1-2 s).
So ``python -m flows.pipeline`` with no server configured checks first and, when
every stage is up to date, says so without starting a flow run (:func:`nothing_to_run`).

With ``set_params`` the pipeline runs as ONE task, ``dvc exp run --temp -S
key=value ...``: an experiment in a temporary copy of the repo, recorded as a
git ref that ``dvc exp show`` lists. params.yaml, dvc.lock and the outputs in
the workspace stay as they were (a plain ``dvc exp run`` would write the
overrides into params.yaml); ``dvc exp apply <name>`` brings the result in.
Per-stage tasks are not possible there: an experiment is one DVC process. The
flow names the experiment itself (``run-lr_0.01-loss_ce``, ``--name``; a suffix
``-2``... where the name is taken).

What each stage did (ran, up to date, restored from the run cache) is decided
from structure, not from DVC's messages (:func:`flows.dvc_tasks.stage_outcomes`):
the stage commands DVC started, and the stage's dvc.lock entry and status before
and after.

Retries: ``retries`` times with ``retry_delay_seconds`` between attempts, only
for transient failures (see :func:`flows.dvc_tasks.classify_failure`). A stage
that reports ``error: ...`` fails the flow at once: the flow run's final state
message is that line, no traceback is logged, and ``python -m flows.pipeline``
ends with the line (exit status 1).

The markdown artifact ``liftplus-metrics`` leads with the evaluation (overall,
mean per-class, many/medium/few accuracy, TTE on or off; :mod:`flows.report`),
then the data statistics, then a link to the plots of the run it describes: the
workspace's (``dvc plots show`` to ``dvc_plots/``, rendered again only when a
stage ran) or the experiment's own (``dvc plots diff <experiment>``, rendered to
``dvc_plots/experiments/<experiment>/``).

Run it: ``python -m flows.pipeline [--stages train evaluate] [-S train.lr=0.01] [--force]``.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any, Optional

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows import dvc_tasks
from flows.dvc_tasks import (
    RAN,
    UP_TO_DATE,
    DvcCommandFailed,
    error_line,
    experiment_base_name,
    experiment_lock,
    failed_state,
    flatten_metrics,
    git_head,
    new_experiment_names,
    override_parts,
    planned_stages,
    retry_if_transient,
    run_dvc,
    run_dvc_json,
    run_logger,
    set_param_args,
    stage_outcomes,
    workspace_lock,
)
from flows.report import STATS_FILE, accuracy_cell, cell, end_with, eval_headline, file_metrics

STAGES = ("shard", "validate", "init_head", "train", "evaluate", "register")
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY_SECONDS = (5.0, 30.0)
METRICS_ARTIFACT_KEY = "liftplus-metrics"
PLOTS_DIR = "dvc_plots"
"""Where ``dvc plots`` pages are rendered: the workspace's in it, an experiment's in ``experiments/<name>``."""
NOT_REPORTED = "not reported by dvc"

dvc_tasks.quiet_expected_failures()


class PipelineRefused(ValueError):
    """The request names something the project does not have; nothing ran."""


EXPECTED_FAILURES = (DvcCommandFailed, PipelineRefused)
"""Failures the flow reports as one line (its final state's message) rather than a traceback."""


def defined_stages(repo: Path) -> list[str]:
    """Stage names in the repo's top-level dvc.yaml (``foreach`` stages as their base name)."""
    dvc_yaml = repo / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise PipelineRefused(f"{dvc_yaml}: not found; is {repo} a DVC project?")
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    return list(stages)


def selected_stages(stages: Optional[list[str]], defined: list[str]) -> list[str]:
    chosen = list(stages) if stages else list(STAGES)
    unknown = [s for s in chosen if s not in defined]
    if unknown:
        raise PipelineRefused(
            f"dvc.yaml has no stage {', '.join(repr(s) for s in unknown)} (it defines: {', '.join(defined)})"
        )
    return chosen


def run_task(task_function: Any, *args: Any, options: dict[str, Any] | None = None) -> Any:
    """Call a task in the flow and return its result; a failed run raises its failure
    (a task that returned a Failed state would otherwise hand the state back)."""
    return task_function.with_options(**(options or {}))(*args, return_state=True).result()


def returned_as_state(function):
    """Run a task's body; a DvcCommandFailed comes back as a Failed state instead of an
    exception, so Prefect logs no traceback; ``retry_if_transient`` still reads the failure
    from the state and retries a transient one. The state's message names the command only:
    the task's log already holds the line the stage or DVC printed, and the flow's final
    state carries it."""

    @functools.wraps(function)
    def body(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except DvcCommandFailed as failure:
            return failed_state(failure, f"{' '.join(failure.command)} failed")

    return body


@task(task_run_name="dvc-status", cache_policy=NO_CACHE, retry_condition_fn=retry_if_transient)
@returned_as_state
def stale_stages(repo: str) -> dict[str, list[str]]:
    """Every stage with the stale stages among it and its upstream (one ``dvc status``)."""
    return dvc_tasks.stale_stages(repo)


@task(task_run_name="dvc-repro-{stage}", cache_policy=NO_CACHE, retry_condition_fn=retry_if_transient)
@returned_as_state
def repro_stage(stage: str, repo: str, force: bool = False) -> dict[str, str]:
    """Bring one stage up to date; return what DVC did to each stage it looked at."""
    args = ["repro", "--force", "--single-item", stage] if force else ["repro", stage]
    plan, stale = planned_stages(repo, [stage], single_item=force)
    before = workspace_lock(repo)
    result = run_dvc(args, repo)
    outcomes = stage_outcomes(plan, result.stage_runs, before, workspace_lock(repo), stale)
    run_logger().info("stage %s: %s", stage, outcomes.get(stage, NOT_REPORTED))
    return outcomes


@task(task_run_name="dvc-exp-run", cache_policy=NO_CACHE, retry_condition_fn=retry_if_transient)
@returned_as_state
def run_experiment(
    set_params: dict[str, Any], stages: list[str], repo: str, force: bool = False
) -> tuple[str, dict[str, str]]:
    """Run the pipeline as one ``dvc exp run --temp`` experiment; return its name and stage outcomes."""
    (name,) = new_experiment_names(repo, [experiment_base_name("run", override_parts(set_params))])
    args = ["exp", "run", "--temp", "--name", name, *set_param_args(set_params)]
    if force:
        args.append("--force")
    args += stages
    plan, _ = planned_stages(repo, stages)
    before, baseline = workspace_lock(repo), git_head(repo)
    result = run_dvc(args, repo)
    return name, stage_outcomes(plan, result.stage_runs, before, experiment_lock(repo, baseline, name))


@task(task_run_name="dvc-metrics-show", cache_policy=NO_CACHE)
@returned_as_state
def workspace_metrics(repo: str) -> dict[str, Any]:
    return dvc_tasks.workspace_metrics(repo)


@task(task_run_name="dvc-exp-show", cache_policy=NO_CACHE)
@returned_as_state
def experiment_metrics(name: str, repo: str) -> dict[str, Any]:
    for row in run_dvc_json(["exp", "show"], repo) or []:
        for experiment in row.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") == name:
                    return flatten_metrics((rev.get("data") or {}).get("metrics"))
    raise DvcCommandFailed(["dvc", "exp", "show"], 0, f"experiment {name!r} is not in `dvc exp show`", False)


def plots_dir(experiment: str | None) -> str:
    return f"{PLOTS_DIR}/experiments/{experiment}" if experiment else PLOTS_DIR


@task(task_run_name="dvc-plots", cache_policy=NO_CACHE)
def render_plots(repo: str, experiment: str | None) -> Path | None:
    """The plots page of the run: the workspace's (``dvc plots show``) or the experiment's own
    (``dvc plots diff <experiment>``: its plots beside the workspace's). None if DVC rendered none."""
    out = plots_dir(experiment)
    args = ["plots", "diff", experiment] if experiment else ["plots", "show"]
    (Path(repo) / out).parent.mkdir(parents=True, exist_ok=True)  # DVC makes the last folder only
    try:
        run_dvc([*args, "-o", out], repo)
    except DvcCommandFailed as failure:
        run_logger().warning("no plots page: %s", failure.message)
        return None
    page = Path(repo) / out / "index.html"
    return page if page.is_file() else None


def bring_up_to_date(chosen: list[str], repo: str, force: bool, options: dict[str, Any]) -> dict[str, str]:
    """Run ``dvc repro`` for each chosen stage that is stale or has a stale upstream; the others
    are up to date, decided from one status check without a process each."""
    stale = {} if force else run_task(stale_stages, repo, options=options)
    outcomes: dict[str, str] = {}
    for stage in chosen:
        if stale.get(stage) == []:
            outcomes.setdefault(stage, UP_TO_DATE)
            continue
        seen = run_task(repro_stage, stage, repo, force, options=options)
        outcomes[stage] = seen.get(stage, NOT_REPORTED)
        for upstream, outcome in seen.items():
            if upstream not in outcomes and outcome != UP_TO_DATE:
                outcomes[upstream] = outcome
    return outcomes


def plots_page(repo: str, experiment: str | None, outcomes: dict[str, str]) -> Path | None:
    """An experiment's plots are always rendered; the workspace's only when a stage ran (a no-op
    run starts no dvc process and links the page as it is, if there is one)."""
    if experiment is None and all(outcome == UP_TO_DATE for outcome in outcomes.values()):
        existing = Path(repo) / plots_dir(None) / "index.html"
        return existing if existing.is_file() else None
    return render_plots(repo, experiment)


def key_value_table(header: tuple[str, str], rows: dict[str, Any], format_value=cell) -> list[str]:
    lines = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    return lines + [f"| {key} | {format_value(value)} |" for key, value in rows.items()]


def metrics_markdown(
    outcomes: dict[str, str], metrics: dict[str, Any], experiment: str | None, plots: Path | None
) -> str:
    """Evaluation first, then the data, the plots and the stages; every metric DVC knows last."""
    source = f"experiment `{experiment}`" if experiment else "workspace"
    headline = eval_headline(metrics)
    tte = headline.pop("TTE")
    stats = file_metrics(metrics, STATS_FILE)
    lines = [f"# liftplus pipeline: {source}", "", "## Evaluation", ""]
    if any(value is not None for value in headline.values()):
        lines += key_value_table(("accuracy (%)", "value"), headline, accuracy_cell)
        lines += ["", f"Test-time ensembling (TTE): {cell(tte)}"]
    else:
        lines.append("No evaluation yet.")
    lines += ["", "## Data", ""]
    lines += key_value_table(("statistic", "value"), stats) if stats else [f"No `{STATS_FILE}` yet."]
    lines += ["", "## Plots", ""]
    if plots is not None:
        lines.append(f"[{plots.parent.name}/{plots.name}]({plots.resolve().as_uri()}) (`{plots}`)")
    else:
        lines.append("None rendered (the pipeline declares no plots, or their files are missing).")
    lines += ["", "## Stages", "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {outcome} |" for stage, outcome in outcomes.items()]
    lines += ["", "## All metrics", ""]
    lines += ["| file | metric | value |", "|---|---|---:|"]
    for name, value in metrics.items():
        file, _, key = name.partition(":")
        lines.append(f"| {file} | {key} | {cell(value)} |")
    return "\n".join(lines) + "\n"


def run_pipeline(
    stages: Optional[list[str]],
    set_params: Optional[dict[str, Any]],
    force: bool,
    root: Path,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The flow's work, inside its run: bring the stages (or one experiment) up to date and report."""
    logger = run_logger()
    repo = str(root)
    chosen = selected_stages(stages, defined_stages(root))
    experiment: str | None = None
    if set_params:
        targets = list(stages) if stages else []
        experiment, outcomes = run_task(run_experiment, dict(set_params), targets, repo, force, options=options)
        metrics = run_task(experiment_metrics, experiment, repo)
    else:
        outcomes = bring_up_to_date(chosen, repo, force, options)
        metrics = run_task(workspace_metrics, repo)

    ran = [s for s, o in outcomes.items() if o == RAN]
    summary = ", ".join(f"{stage} {outcome}" for stage, outcome in outcomes.items())
    logger.info("%s: %s", experiment or "pipeline", summary or "nothing to do")
    logger.info("stages run: %s", ", ".join(ran) if ran else "none, all up to date")
    create_markdown_artifact(
        markdown=metrics_markdown(outcomes, metrics, experiment, plots_page(repo, experiment, outcomes)),
        key=METRICS_ARTIFACT_KEY,
        description="liftplus pipeline: evaluation, data, plots and stage results",
    )
    return {"stages": outcomes, "experiment": experiment, "metrics": metrics}


@flow(name="liftplus-pipeline")
def liftplus_pipeline(
    stages: Optional[list[str]] = None,
    set_params: Optional[dict[str, Any]] = None,
    force: bool = False,
    repo: str = ".",
    retries: int = DEFAULT_RETRIES,
    retry_delay_seconds: Optional[list[float]] = None,
) -> dict[str, Any]:
    """Run the DVC pipeline stage by stage (or as one experiment with ``set_params``).

    Returns ``{"stages": {stage: "ran" | "up to date" | "restored from run cache"},
    "experiment": name or None, "metrics": {"file:key": value}}`` and publishes the
    evaluation, data statistics, plots link and stage results as the markdown
    artifact ``liftplus-metrics``. A failure ends the run in a Failed state whose
    message is its one ``error: ...`` line; its result re-raises the failure.
    """
    if retry_delay_seconds is None:
        retry_delay_seconds = list(DEFAULT_RETRY_DELAY_SECONDS)
    delays = [float(d) for d in retry_delay_seconds]
    options = {"retries": retries, "retry_delay_seconds": delays if any(delays) else 0}
    try:
        return run_pipeline(stages, set_params, force, Path(repo).resolve(), options)
    except EXPECTED_FAILURES as failure:
        return failed_state(failure)


def _overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: -S {pair!r}: expected key=value")
        overrides[key] = value
    return overrides


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", metavar="STAGE", help="stages to bring up to date (default: all six)")
    parser.add_argument(
        "-S",
        "--set-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="run as a DVC experiment with this override (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    parser.add_argument("--repo", default=".", help="DVC project root (default: .)")
    args = parser.parse_args(argv)
    set_params = _overrides(args.set_param) or None
    try:
        if not (set_params or args.force) and nothing_to_run(args.stages, args.repo):
            print("pipeline: every stage is up to date (dvc status); no flow run started")
            return
        liftplus_pipeline(stages=args.stages, set_params=set_params, force=args.force, repo=args.repo)
    except EXPECTED_FAILURES as failure:
        end_with([error_line(failure)], sys.stderr)
        raise SystemExit(1) from None


def nothing_to_run(stages: Optional[list[str]], repo: str) -> bool:
    """From the command line with no Prefect server configured: whether every chosen stage is up to date.

    Then starting Prefect's temporary API (4-8 s) would only record a run that does nothing, so
    the command says so and stops: a no-op costs one status check. With a server (a deployment,
    ``PREFECT_API_URL``) the flow always runs, and records its run and artifact.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return False
    root = Path(repo).resolve()
    stale = dvc_tasks.stale_stages(root)
    return all(stale.get(stage) == [] for stage in selected_stages(stages, defined_stages(root)))


if __name__ == "__main__":
    main()
