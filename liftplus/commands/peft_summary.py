"""``liftplus peft-summary``: how many parameters a model/PEFT/class count trains."""

from __future__ import annotations

import json
from typing import Annotated, Optional, get_args

import typer
from rich.console import Console
from rich.table import Table

from liftplus.errors import ParamsError, exit_on_error
from liftplus.params import PeftName

PEFT_METHODS = get_args(PeftName)


def adaptformer_formula(layers: int, width: int, bottleneck: int, num_classes: int) -> int:
    """LIFT+'s count: ``L * (2dr + r + 3d + 1)`` AdaptFormer parameters plus ``K * d`` for the cosine head."""
    d, r = width, bottleneck
    return layers * (2 * d * r + r + 3 * d + 1) + num_classes * d


@exit_on_error
def peft_summary(
    model: Annotated[str, typer.Option(help="open_clip model name")] = "ViT-B-16",
    num_classes: Annotated[int, typer.Option("--num-classes", "-k", help="number of classes K")] = 1000,
    peft: Annotated[str, typer.Option(help=f"one of {', '.join(PEFT_METHODS)}")] = "adaptformer",
    bottleneck: Annotated[Optional[int], typer.Option(help="default: the LIFT+ rule from K and L")] = None,
    json_: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print parameter counts of MODEL with PEFT and a cosine head for K classes (random init, no weights)."""
    if peft not in PEFT_METHODS:
        raise ParamsError(f"--peft is '{peft}', expected one of {', '.join(PEFT_METHODS)}")
    if num_classes < 1:
        raise ParamsError(f"--num-classes is {num_classes}, expected a positive integer")
    if bottleneck is not None and bottleneck < 1:
        raise ParamsError(f"--bottleneck is {bottleneck}, expected a positive integer")
    from liftplus.model.build import ModelConfig, build_model
    from liftplus.model.summary import parameter_summary

    config = ModelConfig(name=model, peft=peft, bottleneck=bottleneck, num_classes=num_classes)
    summary = parameter_summary(build_model(config))
    if peft == "adaptformer":
        summary["adaptformer_formula"] = adaptformer_formula(
            summary["layers"], summary["width"], summary["bottleneck"], num_classes
        )
    if json_:
        print(json.dumps(summary, indent=2))
        return
    _print_table(summary)


def _print_table(summary: dict) -> None:
    table = Table(
        title=f"{summary['model']} + {summary['peft']}, {summary['classifier']} head, K={summary['num_classes']}"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [
        ("blocks L / width d", f"{summary['layers']} / {summary['width']}"),
        ("bottleneck r", "-" if summary["bottleneck"] is None else str(summary["bottleneck"])),
        ("total parameters (CLIP + tuners + head)", f"{summary['total_parameters']:,}"),
        ("image encoder + head", f"{summary['image_encoder_parameters']:,}"),
        ("trainable: PEFT", f"{summary['trainable_peft']:,}"),
        ("trainable: head", f"{summary['trainable_head']:,}"),
        ("trainable: other", f"{summary['trainable_other']:,}"),
        ("trainable: total", f"{summary['trainable_total']:,}"),
        ("trainable % of model", f"{summary['trainable_percent_of_model']:.3f}%"),
        ("trainable % of image encoder + head", f"{summary['trainable_percent_of_image_encoder']:.3f}%"),
    ]
    if "adaptformer_formula" in summary:
        agrees = "agrees" if summary["adaptformer_formula"] == summary["trainable_total"] else "DIFFERS"
        rows.append(("L(2dr+r+3d+1) + Kd", f"{summary['adaptformer_formula']:,} ({agrees})"))
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
