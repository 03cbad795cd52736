"""`liftplus predict IMAGE...`: the top-k classes of images under a registered or given model.

torch and open_clip are imported only when the command runs, so ``liftplus --help`` stays fast.
The output file's folder must exist, and that is checked, with the output format, before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from liftplus.data.images import DEFAULT_MAX_PIXELS

if TYPE_CHECKING:
    from liftplus.predict import ImagePredictions

DEFAULT_MODEL = "data/model/adapter.pt"


def predictions_table(results: Sequence["ImagePredictions"], title: str) -> Table:
    """One section per image: its path on the first row, then its classes by rank."""
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("image", overflow="fold")
    table.add_column("rank", justify="right")
    table.add_column("class")
    table.add_column("label", justify="right")
    table.add_column("probability", justify="right")
    for result in results:
        for rank, p in enumerate(result.predictions, start=1):
            table.add_row(
                str(result.path) if rank == 1 else "", str(rank), p.classname, str(p.label), f"{p.probability:.4f}",
                end_section=rank == len(result.predictions),
            )
    return table


def predict(
    images: list[Path] = typer.Argument(
        ..., metavar="IMAGE", help="image files, or folders to classify every image in (recursively)"
    ),
    model: str = typer.Option(
        DEFAULT_MODEL, "--model", "-m",
        help="checkpoint file, or a registered version or stage (v0.0.1, liftplus-classifier@v0.0.1, prod)",
    ),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="classes to show per image (at most the model's)"),
    tte: bool = typer.Option(False, "--tte", help="test-time ensembling: average the logits of five crops"),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="CSV or JSON file (by extension) for folder/batch results; its folder must exist"
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA if available), cuda or cpu"),
    max_pixels: int = typer.Option(
        DEFAULT_MAX_PIXELS, "--max-pixels", min=1,
        help="refuse images with more pixels than this, before decoding them (decompression bombs)",
    ),
) -> None:
    """Classify images with a trained model and show each one's most probable classes."""
    from liftplus.predict import check_output_path, collect_images, load_predictor, predict_images, write_predictions
    from liftplus.registry import resolve_model

    check_output_path(output)
    paths = collect_images(images)
    checkpoint = resolve_model(model)
    predictor = load_predictor(checkpoint, tte=tte, device=device)
    progress = any(Path(p).is_dir() for p in images)
    results = predict_images(predictor, paths, k=top_k, batch_size=batch_size, progress=progress,
                             max_pixels=max_pixels)
    if output is not None:
        write_predictions(output, results)
        typer.echo(f"predict: {len(results)} image(s) → {output}", err=True)
        return
    mode = "TTE, 5 crops" if tte else "centre crop"
    Console().print(predictions_table(results, title=f"{checkpoint} ({mode})"))
