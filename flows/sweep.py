"""A parameter sweep as DVC experiments, driven by Prefect, with the best one named.

Every point of the grid is queued with ``dvc exp run --queue --name NAME -S key=value ...``
under a name the flow chooses from the point (``sweep-lr_0.01-loss_ce``; ``-2``, ``-3``...
appended where an experiment or queued entry already has it), so no name is read back
from DVC's output;
``dvc exp run --run-all -j JOBS`` then runs the queue (DVC's own workers, each
experiment in a temporary copy of the repo) and waits for it. The results come
from ``dvc exp show --json``, so the sweep compares exactly what ``dvc exp show``
lists; nothing in the workspace changes. ``dvc exp apply <best>`` brings the
winner into the workspace.

A metric is named ``FILE:KEY`` as DVC shows it (``data/metrics/eval.json:test.acc``,
nested keys with dots), or by its bare KEY when only one metrics file has it.

The table shows every point's overall, mean per-class and many/medium/few
accuracy (:func:`flows.report.eval_headline`), and the ranking metric when it is
another one; ``python -m flows.sweep`` ends by printing it.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import sys
from pathlib import Path
from typing import Any, Optional

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from rich.console import Console
from rich.table import Table

from flows.dvc_tasks import (
    DvcCommandFailed,
    error_line,
    experiment_base_name,
    flatten_metrics,
    git_head,
    new_experiment_names,
    override_parts,
    retry_if_transient,
    run_dvc,
    run_dvc_json,
    run_logger,
    set_param_args,
)
from flows.report import ACCURACY_LABELS, accuracy_cell, cell, end_with, eval_headline, eval_metric_name

DEFAULT_GRID: dict[str, list[Any]] = {"train.lr": [0.01, 0.02], "train.loss": ["la", "ce"]}
DEFAULT_METRIC = "data/metrics/eval.json:test.acc"
SWEEP_ARTIFACT_KEY = "liftplus-sweep"
PARAMS_FILE = "params.yaml"


def grid_points(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first key varying slowest."""
    if not grid:
        raise ValueError("the sweep grid is empty")
    for key, values in grid.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise ValueError(f"sweep grid: '{key}' needs a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def metric_value(metrics_by_file: dict[str, Any] | None, metric: str) -> Any:
    """The value of ``FILE:KEY`` (or a bare ``KEY``) in DVC's metrics JSON, None if absent."""
    flat = flatten_metrics(metrics_by_file)
    if ":" in metric:
        return flat.get(metric)
    found = [value for name, value in flat.items() if name.partition(":")[2] == metric]
    if len(found) > 1:
        files = sorted(name.partition(":")[0] for name in flat if name.partition(":")[2] == metric)
        raise ValueError(f"metric '{metric}' is in several files ({', '.join(files)}); name it FILE:{metric}")
    return found[0] if found else None


def param_value(params_by_file: dict[str, Any] | None, key: str) -> Any:
    """The value of ``KEY`` (``FILE:KEY`` for a file other than params.yaml) in DVC's params JSON."""
    file, sep, dotted = key.rpartition(":")
    file = file if sep else PARAMS_FILE
    value: Any = ((params_by_file or {}).get(file) or {}).get("data")
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def experiment_rows(
    shown: list[dict[str, Any]], names: list[str], keys: list[str], metric: str
) -> list[dict[str, Any]]:
    """One row per named experiment from ``dvc exp show --json``: name, status, params, metric."""
    found: dict[str, dict[str, Any]] = {}
    for baseline in shown or []:
        for experiment in baseline.get("experiments") or []:
            status = ((experiment.get("executor") or {}).get("state")) or "success"
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                headline = eval_headline(flatten_metrics(data.get("metrics")))
                found[rev.get("name") or experiment.get("name")] = {
                    "name": rev.get("name") or experiment.get("name"),
                    "rev": rev.get("rev"),
                    "status": "failed" if rev.get("error") else status,
                    "params": {key: param_value(data.get("params"), key) for key in keys},
                    "metric": metric_value(data.get("metrics"), metric),
                    "accuracy": {label: headline[label] for label in ACCURACY_LABELS},
                }
    return [
        found.get(name)
        or {
            "name": name,
            "rev": None,
            "status": "missing",
            "params": {},
            "metric": None,
            "accuracy": dict.fromkeys(ACCURACY_LABELS),
        }
        for name in names
    ]


def pick_best(rows: list[dict[str, Any]], maximize: bool = True) -> Optional[dict[str, Any]]:
    """The row with the best numeric metric (first one on ties), None if no row has one."""
    scored = [row for row in rows if isinstance(row["metric"], (int, float)) and not isinstance(row["metric"], bool)]
    if not scored:
        return None
    key = (lambda row: row["metric"]) if maximize else (lambda row: -row["metric"])
    return max(scored, key=key)


def metric_is_headline(metric: str) -> bool:
    """Whether ``metric`` is one of the accuracy columns already (then it gets no column of its own)."""
    return any(
        metric in (eval_metric_name(label), eval_metric_name(label).partition(":")[2]) for label in ACCURACY_LABELS
    )


def table_columns(keys: list[str], metric: str) -> list[str]:
    """experiment, status, the swept params, the accuracies, and the ranking metric if it is another."""
    extra = [] if metric_is_headline(metric) else [metric]
    return ["experiment", "status", *keys, *(f"{label} %" for label in ACCURACY_LABELS), *extra]


def row_cells(row: dict[str, Any], keys: list[str], metric: str, best: Optional[dict]) -> list[str]:
    mark = " ★" if best is not None and row["name"] == best["name"] else ""
    accuracies = [accuracy_cell(row["accuracy"].get(label)) for label in ACCURACY_LABELS]
    extra = [] if metric_is_headline(metric) else [cell(row["metric"])]
    return [f"{row['name']}{mark}", row["status"], *(cell(row["params"].get(k)) for k in keys), *accuracies, *extra]


def best_line(metric: str, best: Optional[dict], maximize: bool) -> str:
    goal = "highest" if maximize else "lowest"
    if best is None:
        return f"No experiment produced `{metric}`."
    return f"Best ({goal} `{metric}`): **{best['name']}** = {cell(best['metric'])}"


def sweep_markdown(
    rows: list[dict[str, Any]], keys: list[str], metric: str, best: Optional[dict], maximize: bool
) -> str:
    columns = table_columns(keys, metric)
    lines = [
        "# liftplus sweep",
        "",
        best_line(metric, best, maximize),
        "",
        "| " + " | ".join(columns) + " |",
        "|---|---|" + "---|" * len(keys) + "---:|" * (len(columns) - 2 - len(keys)),
    ]
    lines += ["| " + " | ".join(row_cells(row, keys, metric, best)) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def sweep_table(
    rows: list[dict[str, Any]], keys: list[str], metric: str, best: Optional[dict], maximize: bool = True
) -> Table:
    table = Table(title="liftplus sweep", caption=best_line(metric, best, maximize).replace("**", ""))
    for column in table_columns(keys, metric):
        table.add_column(column, justify="left" if column in ("experiment", "status", *keys) else "right")
    for row in rows:
        is_best = best is not None and row["name"] == best["name"]
        table.add_row(*row_cells(row, keys, metric, best), style="bold green" if is_best else None)
    return table


def table_text(table: Table) -> str:
    """The table as plain text, wide enough not to cut a column."""
    buffer = io.StringIO()
    Console(file=buffer, width=240, color_system=None).print(table)
    return "\n".join(line.rstrip() for line in buffer.getvalue().splitlines())


@task(
    task_run_name="dvc-exp-queue",
    cache_policy=NO_CACHE,
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=retry_if_transient,
)
def queue_experiment(point: dict[str, Any], name: str, repo: str) -> str:
    """Queue one experiment under ``name``; return the name."""
    run_dvc(["exp", "run", "--queue", "--name", name, *set_param_args(point)], repo)
    return name


@task(task_run_name="dvc-exp-names", cache_policy=NO_CACHE)
def sweep_names(points: list[dict[str, Any]], repo: str) -> list[str]:
    """A name per point, from its values, none already used in the repo or its queue."""
    return new_experiment_names(repo, [experiment_base_name("sweep", override_parts(point)) for point in points])


@task(task_run_name="dvc-exp-run-all", cache_policy=NO_CACHE)
def run_queue(jobs: int, repo: str) -> None:
    """Run everything queued, ``jobs`` experiments at a time, and wait until it is done."""
    run_dvc(["exp", "run", "--run-all", "--jobs", str(jobs)], repo)


@task(task_run_name="git-rev-parse", cache_policy=NO_CACHE)
def baseline_commit(repo: str) -> str:
    """The commit the experiments derive from; a commit made while they run moves HEAD, not them."""
    return git_head(repo)


@task(task_run_name="dvc-exp-show", cache_policy=NO_CACHE)
def collect_results(names: list[str], keys: list[str], metric: str, baseline: str, repo: str) -> list[dict[str, Any]]:
    return experiment_rows(run_dvc_json(["exp", "show", "--rev", baseline], repo), names, keys, metric)


@flow(name="liftplus-sweep")
def liftplus_sweep(
    grid: Optional[dict[str, list[Any]]] = None,
    metric: str = DEFAULT_METRIC,
    maximize: bool = True,
    jobs: int = 1,
    repo: str = ".",
) -> dict[str, Any]:
    """Queue one DVC experiment per grid point, run them, and name the best by ``metric``.

    ``grid`` defaults to :data:`DEFAULT_GRID`. Returns ``{"best": name, "metric":
    metric, "value": best value, "experiments": [rows]}`` and publishes the table
    as the markdown artifact ``liftplus-sweep``.
    """
    logger = run_logger()
    grid = grid or DEFAULT_GRID
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    root = str(Path(repo).resolve())
    keys = list(grid)
    points = grid_points(grid)
    baseline = baseline_commit(root)
    logger.info("queueing %d experiments over %s", len(points), ", ".join(keys))
    names = [queue_experiment(point, name, root) for point, name in zip(points, sweep_names(points, root), strict=True)]
    run_queue(jobs, root)
    rows = collect_results(names, keys, metric, baseline, root)
    best = pick_best(rows, maximize)

    create_markdown_artifact(
        markdown=sweep_markdown(rows, keys, metric, best, maximize),
        key=SWEEP_ARTIFACT_KEY,
        description=f"liftplus sweep over {', '.join(keys)} by {metric}",
    )
    failed = [row["name"] for row in rows if row["status"] != "success"]
    if failed:
        logger.warning("experiments that did not succeed: %s (see `dvc queue logs NAME`)", ", ".join(failed))
    if best is None:
        raise RuntimeError(f"no experiment of the sweep produced the metric '{metric}'")
    logger.info(
        "best experiment: %s (%s = %s); `dvc exp apply %s` brings it into the workspace",
        best["name"],
        metric,
        best["metric"],
        best["name"],
    )
    return {
        "best": best["name"],
        "metric": metric,
        "value": best["metric"],
        "experiments": rows,
        "table": table_text(sweep_table(rows, keys, metric, best, maximize)),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.sweep", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--grid", type=json.loads, default=None, help="JSON object of lists, e.g. '{\"train.lr\": [0.01, 0.02]}'"
    )
    parser.add_argument("--metric", default=DEFAULT_METRIC)
    parser.add_argument("--minimize", action="store_true")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--repo", default=".")
    args = parser.parse_args(argv)
    try:
        result = liftplus_sweep(
            grid=args.grid, metric=args.metric, maximize=not args.minimize, jobs=args.jobs, repo=args.repo
        )
    except (DvcCommandFailed, ValueError, RuntimeError) as exc:
        end_with([error_line(exc)], sys.stderr)
        raise SystemExit(1) from None
    end_with(result["table"].splitlines())


if __name__ == "__main__":
    main()
