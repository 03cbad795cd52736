"""`liftplus lt-stats FILE`: long-tail statistics of a split list or a shard manifest,
so a dataset can be looked at before (or after) sharding it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from liftplus.data.longtail import FEW_BELOW, MANY_ABOVE, longtail_stats
from liftplus.data.manifest import MANIFEST_NAME, read_manifest
from liftplus.data.sources.imagefolder import tree_class_counts
from liftplus.data.sources.split_list import counts_from_split_list
from liftplus.errors import DataError


def class_counts_of(file: Path, split: str) -> tuple[list[int], str | None]:
    """Class counts of FILE, and the split they are from (None for a split list).

    FILE is a manifest (``*.json``), a shard directory holding one, an image-folder
    tree (``root/<class>/<image>`` or ``root/{train,val,test}/<class>/...``) or a split list.
    """
    if file.is_dir() and not (file / MANIFEST_NAME).is_file():
        return tree_class_counts(file, split), split
    if not file.is_dir() and file.suffix != ".json":
        return counts_from_split_list(file), None
    manifest = read_manifest(file)
    if split not in manifest["splits"]:
        raise DataError(f"{file}: no split '{split}' (splits: {', '.join(manifest['splits'])})")
    return manifest["splits"][split]["class_counts"], split


def _number(value: Any, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def stats_table(stats: dict[str, Any], title: str) -> Table:
    table = Table(title=title, show_header=False)
    table.add_column("statistic")
    table.add_column("value", justify="right")
    share = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"  # noqa: E731
    rows = [
        ("classes", _number(stats["num_classes"])),
        ("images", _number(stats["num_samples"])),
        ("max images per class", _number(stats["max"])),
        ("min images per class", _number(stats["min"])),
        ("imbalance ratio (max / min)", _number(stats["imbalance_ratio"])),
        (f"many classes (> {MANY_ABOVE})", _number(stats["many"])),
        (f"medium classes ({FEW_BELOW}-{MANY_ABOVE})", _number(stats["medium"])),
        (f"few classes (< {FEW_BELOW})", _number(stats["few"])),
        ("head share (images in many)", share(stats["head_share"])),
        ("tail share (images in few)", share(stats["tail_share"])),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def lt_stats(
    file: Path = typer.Argument(
        ..., help="split list ('path label' lines), image-folder tree, manifest.json or shard dir"
    ),
    json_: bool = typer.Option(False, "--json", help="print the statistics as JSON"),
    split: str = typer.Option("train", help="split of a manifest or of an image-folder tree"),
) -> None:
    """Long-tail statistics (classes, imbalance ratio, many/medium/few) of a split list, image folder or manifest."""
    counts, from_split = class_counts_of(file, split)
    stats = longtail_stats(counts)
    if json_:
        typer.echo(json.dumps({"file": str(file), "split": from_split, **stats}, indent=2))
        return
    console = Console()
    title = f"{file}" + (f" ({from_split})" if from_split else "")
    console.print(stats_table(stats, title))
    empty = stats["empty_classes"]
    if empty:
        shown = ", ".join(map(str, empty[:10])) + (", ..." if len(empty) > 10 else "")
        console.print(
            f"[yellow]warning:[/yellow] {len(empty)} class(es) with no image "
            f"(labels {shown}): imbalance ratio undefined",
            highlight=False,
        )
