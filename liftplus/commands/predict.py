"""`liftplus predict IMAGE...`: the top-k classes of images under a registered or given model.

torch and open_clip are imported only when the command runs, so ``liftplus --help`` stays fast.
The output file's folder must exist, and that is checked, with the output format, before any work.

By default images are seen as the model was evaluated (:func:`liftplus.evaluation.predict.evaluated_config`):
for the project's model and registered versions, ``evaluate.tte`` / ``tte_expand`` of the params
file (a version's own record of ``tte`` first); for any other checkpoint the reference's TTE.
``--tte`` / ``--no-tte`` override it. An unreadable image found in a folder is reported on
stderr and skipped (``--strict``: it stops the run); one named on the command line stops it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from liftplus.data.images import DEFAULT_MAX_PIXELS
from liftplus.params import DEFAULT_PARAMS_FILE, EvaluateParams, load_params

if TYPE_CHECKING:
    from liftplus.evaluation.predict import ImagePredictions

DEFAULT_MODEL = "data/model/adapter.pt"


def predictions_table(results: Sequence[ImagePredictions], title: str) -> Table:
    """One section per image: its path on the first row, then its classes by rank (text, never markup)."""
    table = Table(title=escape(title), box=box.SIMPLE_HEAD, pad_edge=False, min_width=len(title))  # title on one line
    table.add_column("image", overflow="fold")
    table.add_column("rank", justify="right")
    table.add_column("class")
    table.add_column("label", justify="right")
    table.add_column("probability", justify="right")
    for result in results:
        for rank, p in enumerate(result.predictions, start=1):
            path = escape(str(result.path)) if rank == 1 else ""
            table.add_row(
                path,
                str(rank),
                escape(p.classname),
                str(p.label),
                f"{p.probability:.4f}",
                end_section=rank == len(result.predictions),
            )
    return table


def predict(
    images: list[Path] = typer.Argument(
        ..., metavar="IMAGE", help="image files, or folders to classify every image in (recursively)"
    ),
    model: str = typer.Option(
        DEFAULT_MODEL,
        "--model",
        "-m",
        help="checkpoint file, or a registered version or stage (v0.0.1, liftplus-classifier@v0.0.1, prod)",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="classes to show per image (at most the model's)"),
    tte: Optional[bool] = typer.Option(
        None,
        "--tte/--no-tte",
        help="test-time ensembling (average the logits of five crops) or a centre crop; default: as the model "
        "was evaluated (its registration, else the params file's evaluate.tte; TTE for other checkpoints)",
        show_default=False,
    ),
    params: Optional[Path] = typer.Option(
        None,
        "--params",
        help=f"params file whose evaluate section (tte, tte_expand) sets how the project's model and registered "
        f"versions are predicted (default: {DEFAULT_PARAMS_FILE}, if there is one)",
        show_default=False,
    ),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="CSV or JSON file (by extension) for folder/batch results; its folder must exist"
    ),
    strict: bool = typer.Option(
        False, "--strict", help="stop at an unreadable image in a folder instead of skipping it (nothing written)"
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cuda or cpu"),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS,
        "--max-pixels",
        min=1,
        help="refuse images with more pixels than this, before decoding them (decompression bombs)",
    ),
) -> None:
    """Classify images with a trained model and show each one's most probable classes."""
    from tqdm import tqdm

    from liftplus.errors import DataError
    from liftplus.evaluation.predict import (
        check_output_path,
        collect_images,
        evaluated_config,
        load_predictor,
        model_source,
        predict_images,
        write_predictions,
    )

    check_output_path(output)
    paths = collect_images(images)
    source = model_source(model)
    config = evaluated_config(source.version, project_evaluate_params(params, model, source.version is not None))
    predictor = load_predictor(
        source.checkpoint, tte=config.tte if tte is None else tte, device=device, expand=config.expand
    )
    title = f"{source.label} ({predictor.mode})"

    named = {Path(p) for p in images if not Path(p).is_dir()}
    skipped: list[Path] = []

    def on_unreadable(path: Path, error: DataError) -> None:
        if strict or path in named:
            raise error
        tqdm.write(f"warning: {error}; skipped", file=sys.stderr)  # above the progress bar, if one is shown
        skipped.append(path)

    progress = any(Path(p).is_dir() for p in images)
    results = predict_images(
        predictor,
        paths,
        k=top_k,
        batch_size=batch_size,
        progress=progress,
        max_pixels=max_pixels,
        on_unreadable=on_unreadable,
    )
    if not results:
        raise DataError(f"none of the {len(paths)} image(s) could be read ({len(skipped)} skipped); nothing written")
    skipped_note = f"; {len(skipped)} unreadable image(s) skipped" if skipped else ""
    if output is not None:
        write_predictions(output, results)
        typer.echo(f"predict: {title}: {len(results)} image(s) → {output}{skipped_note}", err=True)
        return
    Console().print(predictions_table(results, title=title))
    if skipped:
        typer.echo(f"predict: {title}: {len(results)} image(s){skipped_note}", err=True)


def project_evaluate_params(params: Optional[Path], model: str, registered: bool) -> Optional[EvaluateParams]:
    """The evaluate section of the params file that describes how ``model`` was evaluated, or None.

    ``--params`` applies to any model (and must exist); ``params.yaml``, if there is one,
    to the project's model (``data/model/adapter.pt``) and to registered versions.
    """
    if params is not None:
        return load_params(params).evaluate
    if DEFAULT_PARAMS_FILE.is_file() and (registered or is_project_model(model)):
        return load_params(DEFAULT_PARAMS_FILE).evaluate
    return None


def is_project_model(model: str) -> bool:
    """Whether ``model`` names the pipeline's own checkpoint, ``data/model/adapter.pt``, however it is spelt."""
    given, project = Path(model), Path(DEFAULT_MODEL)
    try:
        return given.samefile(project)
    except OSError:
        return given.resolve() == project.resolve()
