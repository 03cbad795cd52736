"""`liftplus models`: registered model versions, their stages and metrics (from their git tags)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from liftplus.errors import exit_on_error
from liftplus.registry import METRIC_KEYS, ModelVersion, registered_versions

METRIC_HEADERS = {"acc": "acc", "acc_mean_class": "mean", "acc_many": "many", "acc_medium": "medium", "acc_few": "few"}
EARLIER_NAMES = {
    "acc": "accuracy",
    "acc_mean_class": "mean_class_accuracy",
    "acc_many": "many",
    "acc_medium": "medium",
    "acc_few": "few",
}
"""What versions registered before the metrics were renamed call them."""


def _recorded(metrics: dict, key: str) -> object:
    return metrics[key] if key in metrics else metrics.get(EARLIER_NAMES[key])


def _metric(value: object) -> str:
    if value is None:
        return "—"
    return f"{value:.2f}" if isinstance(value, (int, float)) else str(value)


def versions_table(versions: list[ModelVersion]) -> Table:
    """One row per version; the model's name is the title, or a column when there are several."""
    names = sorted({v.name for v in versions})
    several = len(names) > 1
    table = Table(
        title="registered models" if several else names[0], box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True
    )
    columns = (["model"] if several else []) + ["version", "stages", "registered", "commit"]
    for column in columns:
        table.add_column(column, no_wrap=True)
    for key in METRIC_KEYS:
        table.add_column(METRIC_HEADERS[key], justify="right", no_wrap=True)
    for v in versions:
        cells = ([v.name] if several else []) + [
            v.version,
            ", ".join(v.stages) or "—",
            v.created_at[:16].replace("T", " "),
            v.commit[:7],
        ]
        table.add_row(*cells, *(_metric(_recorded(v.metrics, key)) for key in METRIC_KEYS))
    table.caption = "test accuracy, %: overall, mean per class, many/medium/few-shot classes; UTC"
    return table


@exit_on_error
def models(
    json_: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    repo: Path = typer.Option(Path("."), "--repo", help="git repository holding the registry tags"),
) -> None:
    """List registered model versions with their stages, date, commit and metrics."""
    versions = registered_versions(repo)
    if json_:
        typer.echo(json.dumps([v.to_dict() for v in versions], indent=2))
        return
    console = Console()
    if not versions:
        console.print(f"no registered models in {repo.resolve()} (the register stage creates them)")
        return
    console.print(versions_table(versions))
