"""The paper's table: every (dataset, method) as a DVC experiment, one row each.

``python -m flows.paper --datasets demo,cifar100-lt-ir100 --methods lift+,fft,lp,zs
--root cifar100-lt-ir100=/data/cifar-100-python`` runs one experiment per pair and
renders the table of LIFT+'s paper: overall, mean per-class, many, medium and few-shot
test accuracy, trainable parameters, epochs and the train stage's wall time.

A dataset is ``demo`` (the project's params.yaml as it is) or a preset of ``presets/``
(``liftplus preset``), whose values go in as ``-S key=value`` (:func:`liftplus.presets.set_args`)
with ``data.root`` from ``--root NAME=PATH``. A method sets ``train.method``; a preset's
``train.epochs``, ``lr`` and ``mda`` stay where they are its own choice (iNaturalist's 15
epochs) and go back to null, the method's default (:data:`liftplus.params.METHOD_DEFAULTS`),
where they are its method's default, so that ``lift`` trains 10 epochs at lr 0.01 as in the
reference and ``zs`` trains nothing.

Each experiment is ``dvc exp run --temp --name paper-DATASET-METHOD``, one at a time,
timed: DVC records no time and the train stage deliberately writes none into its metrics,
so the flow takes the times at which DVC started the train stage's command and the next
stage's (:func:`flows.dvc_tasks.run_dvc` records every stage command DVC starts). "train
s" is that span: the stage's process (model build, head init, the epochs) and DVC saving
its outputs; "run s" is the whole experiment, sharding and evaluation included (a stage
restored from DVC's run cache takes no time of its own: its train s reads "cached"). The
flow chooses each experiment's name (``-2``... appended where it is taken). The results come
from ``dvc exp show --json`` (:func:`flows.sweep.collect_results`), the trainable
parameters from the model the method builds (:func:`liftplus.model.summary.parameter_summary`,
no weights loaded) for the class count the experiment recorded (``data/stats/longtail.json``).

The table is printed last as markdown, published as the Prefect markdown artifact
``liftplus-paper-table``, and written as ``data/paper/table.csv`` with a grouped bar chart
template, ``data/paper/bars.json``: ``dvc plots show data/paper/table.csv --template
data/paper/bars.json -x overall -y method`` (rendered to ``dvc_plots/paper/`` by the flow).
An experiment that fails is a row marked failed; the command then exits 1, after the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, get_args

import yaml
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.dvc_tasks import (
    RAN,
    DvcCommandFailed,
    error_line,
    experiment_base_name,
    experiment_lock,
    git_head,
    new_experiment_names,
    planned_stages,
    run_dvc,
    run_logger,
    stage_outcomes,
    stage_seconds,
    workspace_lock,
)
from flows.report import ACCURACY_LABELS, accuracy_cell, cell, end_with
from flows.sweep import PARAMS_FILE, baseline_commit, collect_results
from liftplus.errors import LiftplusError, ParamsError
from liftplus.io import csv_text
from liftplus.params import METHOD_DEFAULTS, TrainParams, parse_params, resolved_train
from liftplus.presets import load_preset, preset_names, set_args, with_root

DEMO = "demo"
"""The dataset that is the project's params.yaml as it is (the embedded default: Fashion-MNIST)."""
METHODS: tuple[str, ...] = get_args(TrainParams.model_fields["method"].annotation)
DEFAULT_METHODS = ("lift+", "fft", "lp", "zs")
PAPER_ARTIFACT_KEY = "liftplus-paper-table"
TABLE_FILE = "data/paper/table.csv"
TEMPLATE_FILE = "data/paper/bars.json"
PLOTS_OUT = "dvc_plots/paper"
CLASSES_METRIC = "data/stats/longtail.json:dataset.classes"
"""Where an experiment records its class count (the validate stage's statistics)."""
KNOWN_CLASSES = {
    DEMO: 10,
    "imagenet-lt": 1000,
    "places-lt": 365,
    "inat2018": 8142,
    "cifar100-lt-ir100": 100,
    "cifar100-lt-ir50": 100,
    "cifar100-lt-ir10": 100,
}
"""Class counts for an experiment that recorded none (it failed before the validate stage)."""
RECIPE_KEYS = ("epochs", "lr", "mda")
"""The train keys a method's recipe fills in (:data:`METHOD_DEFAULTS`)."""
METHOD_BATCH_SIZE = {"coop": 32}
"""The batch of a method whose reference recipe sets one (configs/method/coop.yaml); ``train.batch_size``
has no per-method default, so the flow sets it and ``micro_batch`` for such a method's experiments."""
TRAIN_STAGE = "train"
COLUMNS = (
    "dataset",
    "method",
    "experiment",
    "status",
    *(f"{label} %" for label in ACCURACY_LABELS),
    "trainable params",
    "epochs",
    "train s",
    "run s",
)
CSV_FIELDS = (
    "dataset",
    "method",
    "experiment",
    "status",
    "overall",
    "mean_per_class",
    "many",
    "medium",
    "few",
    "trainable_params",
    "epochs",
    "train_seconds",
    "run_seconds",
)
BARS_TEMPLATE: dict[str, Any] = {
    "$schema": "https://vega.github.io/schema/vega-lite/v5.json",
    "data": {
        "values": "<DVC_METRIC_DATA>",
        "format": {"parse": {key: "number" for key in ("overall", "many", "medium", "few")}},
    },
    "title": "<DVC_METRIC_TITLE>",
    "transform": [{"fold": ["overall", "many", "medium", "few"], "as": ["group", "accuracy"]}],
    "mark": {"type": "bar", "tooltip": True},
    "encoding": {
        "row": {"field": "dataset", "type": "nominal", "sort": []},
        "y": {"field": "method", "type": "nominal", "sort": [], "title": "<DVC_METRIC_Y_LABEL>"},
        "yOffset": {"field": "group", "sort": ["overall", "many", "medium", "few"]},
        "x": {"field": "accuracy", "type": "quantitative", "title": "test accuracy (%)"},
        "color": {"field": "group", "type": "nominal", "sort": ["overall", "many", "medium", "few"]},
    },
}
"""A DVC plots template (vega-lite): per dataset, a group of bars per method: overall, many, medium, few."""


class PaperRefused(ValueError):
    """The request names a dataset, method or root the flow cannot run; nothing ran."""


# ---------------------------------------------------------------- the plan


def split_names(text: str | list[str] | tuple[str, ...], what: str, known: list[str] | tuple[str, ...]) -> list[str]:
    """``a,b`` (or a list) as names, each one known, in order, once."""
    names = [name.strip() for name in (text.split(",") if isinstance(text, str) else text) if name.strip()]
    if not names:
        raise PaperRefused(f"--{what}: none given; choose from {', '.join(known)}")
    unknown = [name for name in names if name not in known]
    if unknown:
        raise PaperRefused(f"--{what}: unknown {', '.join(repr(n) for n in unknown)}; choose from {', '.join(known)}")
    return list(dict.fromkeys(names))


def dataset_names() -> list[str]:
    """demo and the presets (none in a project copy without presets/)."""
    try:
        return [DEMO, *preset_names()]
    except ParamsError:
        return [DEMO]


def parse_roots(pairs: list[str] | dict[str, str] | None, datasets: list[str]) -> dict[str, str]:
    """``["NAME=PATH", ...]`` as ``{NAME: PATH}``; every NAME one of ``datasets`` other than demo."""
    if isinstance(pairs, dict):
        pairs = [f"{name}={path}" for name, path in pairs.items()]
    roots: dict[str, str] = {}
    for pair in pairs or []:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path.strip():
            raise PaperRefused(f"--root {pair!r}: expected NAME=PATH, e.g. --root imagenet-lt=/data/imagenet")
        if name not in datasets or name == DEMO:
            raise PaperRefused(
                f"--root {name}=...: '{name}' is not a preset dataset of --datasets "
                f"({', '.join(d for d in datasets if d != DEMO) or 'none'})"
            )
        roots[name] = path
    return roots


def dataset_values(dataset: str, roots: dict[str, str]) -> tuple[dict[str, Any], Optional[str]]:
    """The ``-S`` values a dataset sets (none for demo) and the method its preset names."""
    if dataset == DEMO:
        return {}, None
    if dataset not in roots:
        raise PaperRefused(f"dataset {dataset} needs the folder of its data: --root {dataset}=PATH")
    preset = load_preset(dataset)
    return with_root(preset, roots[dataset]), preset.values.get("train.method")


def method_values(
    values: dict[str, Any], preset_method: Optional[str], method: str, epochs: Optional[int]
) -> dict[str, Any]:
    """A dataset's values with ``train.method`` set to ``method``.

    A preset's epochs, lr and mda that equal its own method's default go back to null (the
    method's default); a choice of the dataset's own (iNaturalist's 15 epochs) stays; ``zs``
    trains nothing, so its recipe keys are null whatever the preset says; coop trains in batches
    of 32 (:data:`METHOD_BATCH_SIZE`). ``epochs`` (all methods but zs) sets the epochs last."""
    merged = {**values, "train.method": method}
    own = METHOD_DEFAULTS.get(preset_method or "", {})
    if method != preset_method:
        for key in RECIPE_KEYS:
            dotted = f"train.{key}"
            if dotted in merged and (method == "zs" or merged[dotted] == own.get(key)):
                merged[dotted] = None
    if method in METHOD_BATCH_SIZE:
        merged["train.batch_size"] = merged["train.micro_batch"] = METHOD_BATCH_SIZE[method]
    if epochs is not None and method != "zs":
        merged["train.epochs"] = epochs
    return merged


def with_overrides(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's mapping with ``section.key`` values set (a copy)."""
    merged = {section: dict(keys) if isinstance(keys, dict) else keys for section, keys in (raw or {}).items()}
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        merged.setdefault(section, {})[key] = value
    return merged


def experiment_recipe(raw_params: dict[str, Any], values: dict[str, Any], label: str) -> dict[str, Any]:
    """What the experiment will run: its model section and resolved epochs, checked as the stages
    check params (only the model and train sections: the rest is the stages' to check)."""
    merged = with_overrides(raw_params, values)
    params = parse_params({"model": merged.get("model") or {}, "train": merged.get("train") or {}}, label)
    train = resolved_train(params.train)
    if train.method == "zs" and params.train.epochs:
        raise ParamsError(f"{label}: 'train.epochs' is {params.train.epochs}, but zs trains nothing")
    return {"model": params.model, "epochs": train.epochs}


def plan_experiments(
    datasets: list[str], methods: list[str], roots: dict[str, str], epochs: Optional[int], repo: Path
) -> list[dict[str, Any]]:
    """One entry per (dataset, method), dataset-major: its ``-S`` values, model section and epochs.
    Every refusal (a preset without its root, params that do not validate) comes before any run."""
    raw = yaml.safe_load((repo / PARAMS_FILE).read_text()) if (repo / PARAMS_FILE).is_file() else {}
    plan = []
    for dataset in datasets:
        values, preset_method = dataset_values(dataset, roots)
        for method in methods:
            overrides = method_values(values, preset_method, method, epochs)
            recipe = experiment_recipe(raw, overrides, f"{dataset} × {method}")
            plan.append({"dataset": dataset, "method": method, "values": overrides, **recipe})
    return plan


# ---------------------------------------------------------------- running and timing


@task(task_run_name="dvc-exp-names", cache_policy=NO_CACHE)
def paper_names(plan: list[dict[str, Any]], repo: str) -> list[str]:
    """``paper-DATASET-METHOD`` per experiment, none already used in the repo or its queue."""
    return new_experiment_names(repo, [experiment_base_name("paper", [e["dataset"], e["method"]]) for e in plan])


@task(task_run_name="dvc-exp-run-{dataset}-{method}", cache_policy=NO_CACHE)
def run_paper_experiment(dataset: str, method: str, values: dict[str, Any], name: str, repo: str) -> dict[str, Any]:
    """One ``dvc exp run --temp --name NAME`` with the experiment's ``-S`` values, timed; a failure is a
    result, not an exception, so that the other experiments still run and the table shows it."""
    started = time.time()
    try:
        plan, _ = planned_stages(repo)
        before, baseline = workspace_lock(repo), git_head(repo)
        result = run_dvc(["exp", "run", "--temp", "--name", name, *set_args(values)], repo)
        ended = time.time()
        outcomes = stage_outcomes(plan, result.stage_runs, before, experiment_lock(repo, baseline, name))
    except DvcCommandFailed as failure:
        run_logger().error("%s × %s failed: %s", dataset, method, failure.message)
        return {
            "name": None,
            "error": error_line(failure),
            "outcome": None,
            "train_seconds": None,
            "run_seconds": time.time() - started,
        }
    return {
        "name": name,
        "error": None,
        "outcome": outcomes.get(TRAIN_STAGE),
        "train_seconds": stage_seconds(result.stage_runs, TRAIN_STAGE, ended),
        "run_seconds": ended - started,
    }


@functools.cache
def count_trainable(model_json: str, method: str, num_classes: int) -> int:
    """Trainable parameters of ``method``'s model for ``num_classes`` (random init: no weights loaded)."""
    from liftplus.model.build import ModelConfig, build_model
    from liftplus.model.summary import parameter_summary
    from liftplus.params import ModelParams

    model = ModelParams.model_validate({**json.loads(model_json), "pretrained": None})
    return parameter_summary(build_model(ModelConfig.for_method(model, method, num_classes)))["trainable_total"]


@task(task_run_name="count-trainable-parameters", cache_policy=NO_CACHE)
def trainable_parameters(plan: list[dict[str, Any]], classes: list[Optional[int]]) -> list[Optional[int]]:
    """Per experiment, or None where the class count is unknown or the model cannot be built here
    (the table still comes out: the count is the one column that needs the model code)."""
    counts: list[Optional[int]] = []
    for entry, num_classes in zip(plan, classes, strict=True):
        num_classes = num_classes or KNOWN_CLASSES.get(entry["dataset"])
        try:
            counts.append(
                None
                if not num_classes
                else count_trainable(entry["model"].model_dump_json(), entry["method"], int(num_classes))
            )
        except Exception as exc:  # noqa: BLE001 - a missing count must not cost the experiments' results
            run_logger().warning(
                "%s × %s: no parameter count (%s: %s)", entry["dataset"], entry["method"], type(exc).__name__, exc
            )
            counts.append(None)
    return counts


# ---------------------------------------------------------------- the table


def paper_rows(
    plan: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    shown: dict[str, dict[str, Any]],
    params: list[Optional[int]],
) -> list[dict[str, Any]]:
    """One row per planned experiment: its run, what ``dvc exp show`` says of it, its parameters."""
    rows = []
    for entry, run, count in zip(plan, runs, params, strict=True):
        found = shown.get(run["name"]) if run["name"] else None
        status = found["status"] if found else "failed"
        accuracy = found["accuracy"] if found else dict.fromkeys(ACCURACY_LABELS)
        train_seconds: Any = run["train_seconds"]
        if train_seconds is None and run["outcome"] not in (None, RAN):
            train_seconds = "cached"
        rows.append(
            {
                "dataset": entry["dataset"],
                "method": entry["method"],
                "experiment": run["name"],
                "status": status,
                "error": run["error"],
                "accuracy": accuracy,
                "trainable_params": count,
                "epochs": entry["epochs"],
                "train_seconds": train_seconds,
                "run_seconds": run["run_seconds"],
            }
        )
    return rows


def seconds_cell(value: Any) -> str:
    return cell(value, ".1f") if isinstance(value, float) else cell(value)


def row_cells(row: dict[str, Any]) -> list[str]:
    count = row["trainable_params"]
    return [
        row["dataset"],
        row["method"],
        cell(row["experiment"]),
        row["status"],
        *(accuracy_cell(row["accuracy"].get(label)) for label in ACCURACY_LABELS),
        "—" if count is None else f"{count:,}",
        cell(row["epochs"]),
        seconds_cell(row["train_seconds"]),
        seconds_cell(row["run_seconds"]),
    ]


def paper_markdown(rows: list[dict[str, Any]]) -> str:
    """The table as markdown, then one line per failed experiment and what the times cover."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|---|" + "---:|" * (len(COLUMNS) - 4)]
    lines += ["| " + " | ".join(row_cells(row)) + " |" for row in rows]
    failed = [row for row in rows if row["status"] != "success"]
    notes = [
        f"- {row['dataset']} × {row['method']}: {row['status']}" + (f": {row['error']}" if row["error"] else "")
        for row in failed
    ]
    footer = (
        "train s: the train stage (model build, head init, the epochs, DVC saving its outputs); "
        "run s: the whole `dvc exp run`. Accuracy: top-1 on the test split, %."
    )
    return "\n".join(["# liftplus paper table", "", *lines, "", *notes, *([""] if notes else []), footer]) + "\n"


def table_csv(rows: list[dict[str, Any]]) -> str:
    """``data/paper/table.csv``: one line per dataset and method, empty cells where nothing was measured."""

    def values(row: dict[str, Any]) -> list[Any]:
        return [
            row["dataset"],
            row["method"],
            row["experiment"] or "",
            row["status"],
            *("" if row["accuracy"].get(label) is None else row["accuracy"][label] for label in ACCURACY_LABELS),
            "" if row["trainable_params"] is None else row["trainable_params"],
            row["epochs"],
            *(
                round(v, 1) if isinstance(v, float) else "" if v is None else v
                for v in (row["train_seconds"], row["run_seconds"])
            ),
        ]

    return csv_text([dict(zip(CSV_FIELDS, values(row))) for row in rows], CSV_FIELDS)


@task(task_run_name="dvc-plots-paper", cache_policy=NO_CACHE)
def write_plot(rows: list[dict[str, Any]], repo: str) -> Optional[Path]:
    """``data/paper/table.csv`` and its bar chart template, rendered to ``dvc_plots/paper``;
    the page, or None if DVC rendered none (the files are written either way)."""
    root = Path(repo)
    (root / TABLE_FILE).parent.mkdir(parents=True, exist_ok=True)
    (root / TABLE_FILE).write_text(table_csv(rows))
    (root / TEMPLATE_FILE).write_text(json.dumps(BARS_TEMPLATE, indent=2) + "\n")
    (root / PLOTS_OUT).parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dvc(plots_show_args(["-o", PLOTS_OUT]), repo)
    except DvcCommandFailed as failure:
        run_logger().warning("no plots page for %s: %s", TABLE_FILE, failure.message)
        return None
    page = root / PLOTS_OUT / "index.html"
    return page if page.is_file() else None


def plots_show_args(extra: list[str]) -> list[str]:
    """``dvc plots show`` of the table with its template (``extra``: ``-o DIR``, ``--json``)."""
    return [
        "plots",
        "show",
        TABLE_FILE,
        "--template",
        TEMPLATE_FILE,
        "-x",
        "overall",
        "-y",
        "method",
        "--title",
        "LIFT+ paper table: test accuracy (%)",
        *extra,
    ]


def checked_plan(
    datasets: list[str] | str,
    methods: list[str] | str,
    roots: list[str] | dict[str, str] | None,
    epochs: Optional[int],
    repo: Path,
) -> list[dict[str, Any]]:
    """The request checked and planned (:func:`plan_experiments`); refused in one line if it cannot run."""
    datasets = split_names(datasets, "datasets", dataset_names())
    methods = split_names(methods, "methods", METHODS)
    if epochs is not None and epochs < 1:
        raise PaperRefused(f"--epochs is {epochs}, expected at least 1")
    return plan_experiments(datasets, methods, parse_roots(roots, datasets), epochs, repo)


def plan_axes(plan: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The datasets and the methods of a plan, in order."""
    return list(dict.fromkeys(e["dataset"] for e in plan)), list(dict.fromkeys(e["method"] for e in plan))


@flow(name="liftplus-paper")
def liftplus_paper(
    datasets: Optional[list[str]] = None,
    methods: Optional[list[str]] = None,
    roots: Optional[dict[str, str]] = None,
    epochs: Optional[int] = None,
    repo: str = ".",
) -> dict[str, Any]:
    """Run every (dataset, method) as a DVC experiment and render the paper's table.

    Returns ``{"rows": [...], "markdown": text, "csv": path, "plots": page or None}`` and
    publishes the markdown as the artifact ``liftplus-paper-table``. A refusal (unknown
    name, a preset without ``roots[name]``, params that do not validate) raises
    :class:`PaperRefused` or ParamsError before anything runs.
    """
    logger = run_logger()
    root = Path(repo).resolve()
    plan = checked_plan(datasets or [DEMO], methods or list(DEFAULT_METHODS), roots, epochs, root)
    datasets, methods = plan_axes(plan)
    baseline = baseline_commit(str(root))
    logger.info("running %d experiments: %s × %s", len(plan), ", ".join(datasets), ", ".join(methods))
    names = paper_names(plan, str(root))
    runs = [
        run_paper_experiment(e["dataset"], e["method"], e["values"], name, str(root))
        for e, name in zip(plan, names, strict=True)
    ]
    ran = [run["name"] for run in runs if run["name"]]
    shown = {row["name"]: row for row in collect_results(ran, [], CLASSES_METRIC, baseline, str(root))}
    classes = [(shown.get(run["name"]) or {}).get("metric") for run in runs]
    rows = paper_rows(plan, runs, shown, trainable_parameters(plan, classes))

    markdown = paper_markdown(rows)
    create_markdown_artifact(
        markdown=markdown,
        key=PAPER_ARTIFACT_KEY,
        description=f"liftplus paper table: {', '.join(datasets)} × {', '.join(methods)}",
    )
    page = write_plot(rows, str(root))
    failed = [f"{row['dataset']} × {row['method']}" for row in rows if row["status"] != "success"]
    if failed:
        logger.warning("experiments that did not succeed: %s", ", ".join(failed))
    return {"rows": rows, "markdown": markdown, "csv": str(root / TABLE_FILE), "plots": page, "failed": failed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.paper", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--datasets",
        default=DEMO,
        help=f"comma-separated: {DEMO} (params.yaml as it is) or presets ({', '.join(preset_names())})",
    )
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument(
        "--root",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="a preset dataset's data folder (repeat per preset)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="train every method but zs this many epochs")
    parser.add_argument("--repo", default=".")
    args = parser.parse_args(argv)
    try:  # refused before Prefect starts: a request that cannot run costs nothing
        datasets, methods = plan_axes(
            checked_plan(args.datasets, args.methods, args.root, args.epochs, Path(args.repo).resolve())
        )
        result = liftplus_paper(
            datasets=datasets,
            methods=methods,
            roots=parse_roots(args.root, datasets),
            epochs=args.epochs,
            repo=args.repo,
        )
    except (PaperRefused, LiftplusError, DvcCommandFailed, RuntimeError) as exc:
        end_with([error_line(exc)], sys.stderr)
        raise SystemExit(1) from None
    end_with(result["markdown"].rstrip("\n").splitlines())
    if result["failed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
