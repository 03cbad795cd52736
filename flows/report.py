"""What a run reports: the evaluation headline, read through one mapping, and the
last lines a command-line flow prints.

``data/metrics/eval.json``'s key names live only in :data:`EVAL_KEYS`; the
pipeline's artifact and the sweep's table read the metrics through
:func:`eval_headline`, so renaming a key there touches this one place.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

EVAL_FILE = "data/metrics/eval.json"
STATS_FILE = "data/stats/longtail.json"

EVAL_KEYS = {
    "overall": "test.acc",
    "mean per class": "test.acc_mean_class",
    "many": "test.acc_many",
    "medium": "test.acc_medium",
    "few": "test.acc_few",
    "TTE": "tte",
}
"""Headline label → key in eval.json, in the order they are shown."""
ACCURACY_LABELS = ("overall", "mean per class", "many", "medium", "few")
"""The headline labels that are accuracies in percent (the sweep's columns)."""


def eval_metric_name(label: str) -> str:
    """The ``FILE:KEY`` name DVC gives the headline metric ``label``."""
    return f"{EVAL_FILE}:{EVAL_KEYS[label]}"


def eval_headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{label: value}`` for every headline label, None where the run did not record it
    (DVC leaves out a null, e.g. ``few`` when no class is few-shot)."""
    return {label: metrics.get(eval_metric_name(label)) for label in EVAL_KEYS}


def file_metrics(metrics: dict[str, Any], file: str) -> dict[str, Any]:
    """``{key: value}`` of one metrics file out of DVC's flattened ``{"file:key": value}``."""
    prefix = f"{file}:"
    return {name[len(prefix) :]: value for name, value in metrics.items() if name.startswith(prefix)}


def cell(value: Any, digits: str = ".4g") -> str:
    """A value in a table: floats to ``digits``, booleans as on/off, missing as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return format(value, digits)
    return str(value).replace("|", "\\|")


def accuracy_cell(value: Any) -> str:
    return cell(value, ".2f")


def stop_temporary_api() -> None:
    """Stop the temporary Prefect API a flow started (no server configured), now rather than at exit,
    so that its "Stopping temporary server" line comes before a command's last words."""
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is None:  # never imported: no temporary server was started
        return
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():  # a server someone configured (or a test harness's): not ours to stop
        return
    server = server_module.SubprocessASGIServer._instances.get(None)
    if server is not None:
        APILogHandler().flush()  # the run's last log lines reach the API before it goes
        server.stop()


def end_with(lines: Iterable[str], stream: Any = None) -> None:
    """Print ``lines`` as the very last output of a command-line run."""
    stop_temporary_api()
    stream = stream or sys.stdout
    for line in lines:
        print(line, file=stream, flush=True)
