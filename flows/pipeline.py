"""The daily pipeline as a Prefect flow: one task per DVC stage, DVC decides what runs.

Each task runs ``dvc repro <stage>``: DVC compares deps, params and outs with
dvc.lock, runs the stage only if something changed (or restores it from the run
cache), and records the run in dvc.lock. Running the whole target rather than
``--single-item`` also brings a stage's upstream up to date, so choosing
``stages=["evaluate"]`` can never evaluate a stale model; after the previous
task that check is a no-op. ``force=True`` uses ``--force --single-item`` so
each stage reruns exactly once.

With ``set_params`` the pipeline runs as ONE task, ``dvc exp run --temp -S
key=value ...``: an experiment in a temporary copy of the repo, recorded as a
git ref that ``dvc exp show`` lists. params.yaml, dvc.lock and the outputs in
the workspace stay as they were (a plain ``dvc exp run`` would write the
overrides into params.yaml); ``dvc exp apply <name>`` brings the result in.
Per-stage tasks are not possible there: an experiment is one DVC process.

Retries: ``retries`` times with ``retry_delay_seconds`` between attempts, only
for transient failures (see :func:`flows.dvc_tasks.classify_failure`). A stage
that reports ``error: ...`` fails the flow at once with that line.

Run it: ``python -m flows.pipeline [--stages train evaluate] [-S train.lr=0.01] [--force]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_tasks import (
    RAN,
    DvcCommandFailed,
    UP_TO_DATE,
    experiment_names,
    flatten_metrics,
    retry_if_transient,
    run_dvc,
    run_dvc_json,
    run_logger,
    set_param_args,
    stage_outcomes,
)

STAGES = ("shard", "validate", "init_head", "train", "evaluate", "register")
DEFAULT_RETRIES = 2
DEFAULT_RETRY_DELAY_SECONDS = (5.0, 30.0)
METRICS_ARTIFACT_KEY = "liftplus-metrics"
PLOTS_PAGES = ("plots/index.html", "dvc_plots/index.html")
"""Where a rendered ``dvc plots show`` page is looked for, first found wins."""


def defined_stages(repo: Path) -> list[str]:
    """Stage names in the repo's top-level dvc.yaml (``foreach`` stages as their base name)."""
    dvc_yaml = repo / "dvc.yaml"
    if not dvc_yaml.is_file():
        raise ValueError(f"{dvc_yaml}: not found; is {repo} a DVC project?")
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    return list(stages)


def selected_stages(stages: Optional[list[str]], defined: list[str]) -> list[str]:
    chosen = list(stages) if stages else list(STAGES)
    unknown = [s for s in chosen if s not in defined]
    if unknown:
        raise ValueError(
            f"dvc.yaml has no stage {', '.join(repr(s) for s in unknown)} (it defines: {', '.join(defined)})"
        )
    return chosen


@task(task_run_name="dvc-repro-{stage}", cache_policy=NO_CACHE, retry_condition_fn=retry_if_transient)
def repro_stage(stage: str, repo: str, force: bool = False) -> dict[str, str]:
    """Bring one stage up to date; return what DVC did to each stage it looked at."""
    args = ["repro", "--force", "--single-item", stage] if force else ["repro", stage]
    outcomes = stage_outcomes(run_dvc(args, repo).output)
    run_logger().info("stage %s: %s", stage, outcomes.get(stage, "not reported by dvc"))
    return outcomes


@task(task_run_name="dvc-exp-run", cache_policy=NO_CACHE, retry_condition_fn=retry_if_transient)
def run_experiment(
    set_params: dict[str, Any], stages: list[str], repo: str, force: bool = False
) -> tuple[str, dict[str, str]]:
    """Run the pipeline as one ``dvc exp run --temp`` experiment; return its name and stage outcomes."""
    args = ["exp", "run", "--temp", *set_param_args(set_params)]
    if force:
        args.append("--force")
    args += stages
    output = run_dvc(args, repo).output
    names = experiment_names(output)
    if not names:
        raise RuntimeError("dvc exp run finished but did not name its experiment")
    return names[-1], stage_outcomes(output)


@task(task_run_name="dvc-metrics-show", cache_policy=NO_CACHE)
def workspace_metrics(repo: str) -> dict[str, Any]:
    shown = run_dvc_json(["metrics", "show"], repo) or {}
    return flatten_metrics((shown.get("") or {}).get("data"))


@task(task_run_name="dvc-exp-show", cache_policy=NO_CACHE)
def experiment_metrics(name: str, repo: str) -> dict[str, Any]:
    for row in run_dvc_json(["exp", "show"], repo) or []:
        for experiment in row.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") == name:
                    return flatten_metrics((rev.get("data") or {}).get("metrics"))
    raise RuntimeError(f"experiment {name!r} is not in `dvc exp show`")


def plots_page(repo: Path) -> Path | None:
    for relative in PLOTS_PAGES:
        if (repo / relative).is_file():
            return repo / relative
    return None


def _cell(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def metrics_markdown(
    outcomes: dict[str, str], metrics: dict[str, Any], experiment: str | None, plots: Path | None
) -> str:
    source = f"experiment `{experiment}`" if experiment else "workspace"
    lines = ["# liftplus pipeline", "", "| stage | result |", "|---|---|"]
    lines += [f"| {stage} | {outcome} |" for stage, outcome in outcomes.items()]
    lines += ["", f"## Metrics ({source})", ""]
    if metrics:
        lines += ["| file | metric | value |", "|---|---|---:|"]
        for name, value in metrics.items():
            file, _, key = name.partition(":")
            lines.append(f"| {file} | {key} | {_cell(value)} |")
    else:
        lines.append("No metrics yet.")
    lines.append("")
    if plots is not None:
        lines.append(f"Plots: [{plots.name}]({plots.resolve().as_uri()}) (`{plots}`)")
    else:
        lines.append("Plots: none rendered yet (`dvc plots show` writes them).")
    return "\n".join(lines) + "\n"


@flow(name="liftplus-pipeline")
def liftplus_pipeline(
    stages: Optional[list[str]] = None,
    set_params: Optional[dict[str, Any]] = None,
    force: bool = False,
    repo: str = ".",
    retries: int = DEFAULT_RETRIES,
    retry_delay_seconds: list[float] = list(DEFAULT_RETRY_DELAY_SECONDS),
) -> dict[str, Any]:
    """Run the DVC pipeline stage by stage (or as one experiment with ``set_params``).

    Returns ``{"stages": {stage: "ran" | "up to date" | "restored from run cache"},
    "experiment": name or None, "metrics": {"file:key": value}}`` and publishes the
    same as the markdown artifact ``liftplus-metrics``.
    """
    logger = run_logger()
    root = Path(repo).resolve()
    chosen = selected_stages(stages, defined_stages(root))
    delays = [float(d) for d in retry_delay_seconds]
    options = {"retries": retries, "retry_delay_seconds": delays if any(delays) else 0}

    experiment: str | None = None
    outcomes: dict[str, str] = {}
    if set_params:
        targets = list(stages) if stages else []
        experiment, outcomes = run_experiment.with_options(**options)(
            dict(set_params), targets, str(root), force
        )
        metrics = experiment_metrics(experiment, str(root))
    else:
        for stage in chosen:
            seen = repro_stage.with_options(**options)(stage, str(root), force)
            outcomes[stage] = seen.get(stage, "not reported by dvc")
            for upstream, outcome in seen.items():
                if upstream not in outcomes and outcome != UP_TO_DATE:
                    outcomes[upstream] = outcome
        metrics = workspace_metrics(str(root))

    ran = [s for s, o in outcomes.items() if o == RAN]
    summary = ", ".join(f"{stage} {outcome}" for stage, outcome in outcomes.items())
    logger.info("%s: %s", experiment or "pipeline", summary or "nothing to do")
    logger.info("stages run: %s", ", ".join(ran) if ran else "none, all up to date")
    create_markdown_artifact(
        markdown=metrics_markdown(outcomes, metrics, experiment, plots_page(root)),
        key=METRICS_ARTIFACT_KEY,
        description="liftplus pipeline: stage results and metrics",
    )
    return {"stages": outcomes, "experiment": experiment, "metrics": metrics}


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
    parser.add_argument("--stages", nargs="+", metavar="STAGE",
                        help="stages to bring up to date (default: all six)")
    parser.add_argument("-S", "--set-param", action="append", default=[], metavar="KEY=VALUE",
                        help="run as a DVC experiment with this override (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun stages even if up to date")
    parser.add_argument("--repo", default=".", help="DVC project root (default: .)")
    args = parser.parse_args(argv)
    try:
        liftplus_pipeline(stages=args.stages, set_params=_overrides(args.set_param) or None,
                          force=args.force, repo=args.repo)
    except (DvcCommandFailed, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
