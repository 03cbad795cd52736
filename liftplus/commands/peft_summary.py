"""``liftplus peft-summary``: how many parameters a model/PEFT/class count trains."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Annotated, Optional, get_args

import typer
from rich.console import Console
from rich.table import Table

from liftplus.errors import ParamsError, exit_on_error
from liftplus.params import ModelParams, PeftName

PEFT_METHODS = get_args(PeftName)
CLASSIFIERS = ("cosine", "linear", "l2", "layernorm", "text")


def adaptformer_formula(layers: int, width: int, bottleneck: int, num_classes: int) -> int:
    """LIFT+'s count: ``L * (2dr + r + 3d + 1)`` AdaptFormer parameters plus ``K * d`` for the cosine head."""
    d, r = width, bottleneck
    return layers * (2 * d * r + r + 3 * d + 1) + num_classes * d


def per_block_formula(
    method: str, d: int, mlp: int, r: Optional[int], aft_ratio: Optional[float] = None, aft_loc: str = "all"
) -> int:
    """Parameters ``method`` trains in one block of width ``d`` and MLP width ``mlp``, from the shapes of the
    reference's modules (models/modules.py, models/models.py): AdaptFormer ``2dr + r + 3d + 1`` (LN, down,
    up, scale), Adapter ``2dr + r + 2d``, LoRA on q and v ``4dr``, SSF ``2(3d + d + mlp + d)``, a prompt ``rd``,
    BitFit the biases ``3d + d + mlp + d + 2d``, full ``4d² + 2d·mlp + 9d + mlp``, AFT ``int(n * ratio)`` of
    each weight and bias of the attention and/or MLP."""
    if method == "adaptformer":
        return 2 * d * r + r + 3 * d + 1
    if method == "adapter":
        return 2 * d * r + r + 2 * d
    if method == "lora":
        return 2 * (2 * d * r)
    if method == "ssf":
        return 2 * (3 * d + d + mlp + d)
    if method in ("vpt-deep", "vpt-shallow"):
        return r * d
    if method == "bitfit":
        return 3 * d + d + mlp + d + 2 * d
    if method == "full":
        return 4 * d * d + 2 * d * mlp + 9 * d + mlp
    if method == "aft":
        linears = {"attn": [(3 * d, d), (d, d)], "mlp": [(mlp, d), (d, mlp)]}
        shapes = [s for loc in ("attn", "mlp") if aft_loc in (loc, "all") for s in linears[loc]]
        return sum(min(n, int(n * aft_ratio)) for out, inp in shapes for n in (out * inp, out))
    return 0


def reference_formula(
    methods: Sequence[str],
    tuned: dict[str, list[int]],
    d: int,
    mlp: int,
    sizes: dict[str, int],
    num_classes: int,
    classifier: str = "cosine",
    aft_ratio: Optional[float] = None,
    aft_loc: str = "all",
    text_head: int = 0,
) -> int:
    """Trainable parameters of ``methods`` on the ``tuned`` blocks of each plus the head (``K * d``, and
    ``K`` biases for the linear head; for the text head ``text_head``, the sum of
    :func:`~liftplus.model.text_head.text_head_counts`). BitFit adds nothing to full fine-tuning: its
    biases are among those."""
    if classifier == "text":
        total = text_head
    else:
        total = num_classes * d + (num_classes if classifier == "linear" else 0)
    for method in methods:
        if method == "bitfit" and "full" in methods:
            continue
        block = per_block_formula(method, d, mlp, sizes.get(method), aft_ratio, aft_loc)
        total += block * len(tuned.get(method, []))
    return total


def _layers_option(text: Optional[str]):
    """``--layers 6`` (the last 6 blocks) or ``--layers 0,5,11`` (those blocks)."""
    if text is None:
        return None
    try:
        values = [int(part) for part in text.replace("+", ",").split(",") if part.strip()]
    except ValueError:
        raise ParamsError(f"--layers is '{text}', expected k (the last k blocks) or indices like 0,5,11") from None
    return values[0] if len(values) == 1 and "," not in text else values


@exit_on_error
def peft_summary(
    model: Annotated[str, typer.Option(help="open_clip model name")] = "ViT-B-16",
    num_classes: Annotated[int, typer.Option("--num-classes", "-k", help="number of classes K")] = 1000,
    peft: Annotated[
        str,
        typer.Option(help=f"one of {', '.join(PEFT_METHODS)}, or several joined by ',' or '+' (bitfit+adaptformer)"),
    ] = "adaptformer",
    bottleneck: Annotated[Optional[int], typer.Option(help="default: the LIFT+ rule from K and L")] = None,
    layers: Annotated[
        Optional[str], typer.Option(help="blocks tuned: k (the last k) or indices 0,5,11; default every block")
    ] = None,
    classifier: Annotated[str, typer.Option(help=f"one of {', '.join(CLASSIFIERS)}")] = "cosine",
    aft_ratio: Annotated[Optional[float], typer.Option(help="AFT: share of weights trained; default ~K*d")] = None,
    aft_loc: Annotated[str, typer.Option(help="AFT: attn, mlp or all")] = "all",
    aft_seed: Annotated[int, typer.Option(help="AFT: mask seed")] = 0,
    coop_ctx_len: Annotated[
        Optional[int], typer.Option(help="text head: learnable context tokens (CoOp); default 4, 0 for none")
    ] = None,
    coop_init: Annotated[Optional[str], typer.Option(help="text head: photo (5 context tokens) or random")] = None,
    clip_adapter: Annotated[bool, typer.Option(help="text head: CLIP-Adapter on both features")] = False,
    clip_adapter_dim: Annotated[int, typer.Option(help="text head: CLIP-Adapter bottleneck")] = 4,
    proj_tuning: Annotated[bool, typer.Option(help="text head: train the image and text projections")] = False,
    json_: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print parameter counts of MODEL with PEFT on the chosen blocks and a head for K classes (random init,
    no weights), beside the count the reference's formulas give."""
    names = [part.strip() for part in peft.replace("+", ",").split(",") if part.strip()]
    unknown = next((name for name in names if name not in PEFT_METHODS), None)
    if unknown is not None or not names:
        shown = unknown if unknown is not None else peft
        raise ParamsError(f"--peft is '{shown}', expected one of {', '.join(PEFT_METHODS)}")
    try:
        methods = ModelParams.normalize_peft(names)
    except ValueError as exc:
        raise ParamsError(f"--peft is '{peft}': {exc}") from None
    if num_classes < 1:
        raise ParamsError(f"--num-classes is {num_classes}, expected a positive integer")
    if bottleneck is not None and bottleneck < 1:
        raise ParamsError(f"--bottleneck is {bottleneck}, expected a positive integer")
    if classifier not in CLASSIFIERS:
        raise ParamsError(f"--classifier is '{classifier}', expected one of {', '.join(CLASSIFIERS)}")
    if aft_ratio is not None and not 0 < aft_ratio <= 1:
        raise ParamsError(f"--aft-ratio is {aft_ratio}, expected a share in (0, 1]")
    if aft_loc not in ("attn", "mlp", "all"):
        raise ParamsError(f"--aft-loc is '{aft_loc}', expected attn, mlp or all")
    text_args = _text_head_args(classifier, coop_ctx_len, coop_init, clip_adapter, clip_adapter_dim, proj_tuning)
    layer_spec = _layers_option(layers)
    from liftplus.model.build import ModelConfig, build_model
    from liftplus.model.summary import parameter_summary

    config = ModelConfig(
        name=model,
        peft=methods,
        bottleneck=bottleneck,
        num_classes=num_classes,
        classifier=classifier,
        peft_layers=tuple(layer_spec) if isinstance(layer_spec, list) else layer_spec,
        aft_ratio=aft_ratio,
        aft_loc=aft_loc,
        aft_seed=aft_seed,
        **text_args,
    )
    built = build_model(config)
    summary = parameter_summary(built)
    if built.is_resnet:
        _resnet_rows(summary, built, methods, classifier, config)
    else:
        _vit_rows(summary, built, methods, classifier, config)
    if json_:
        print(json.dumps(summary, indent=2))
        return
    _print_table(summary)


def _resnet_rows(summary: dict, built, methods: tuple[str, ...], classifier: str, config) -> None:
    """A CLIP ResNet: every block is tuned by full/BitFit, the SSF sits on the pooled feature; the
    reference's count from :func:`~liftplus.model.resnet.resnet_formula`."""
    from liftplus.model.resnet import resnet_formula, resnet_vision_cfg
    from liftplus.model.text_head import text_head_counts, text_options

    vision = resnet_vision_cfg(config.name)
    summary["peft"] = "+".join(methods)
    summary["resnet"] = True
    summary["tuned_layers"] = list(range(summary["layers"])) if {"full", "bitfit"} & set(methods) else []
    summary["bottlenecks"] = {}
    d = summary["width"]
    text_head = 0
    if classifier == "text":
        counts = text_head_counts(text_options(config), built.backbone.token_embedding.weight.shape[1], d, d)
        summary["text_head"] = counts
        text_head = sum(counts.values())
    summary["formula"] = resnet_formula(
        methods, vision["layers"], int(vision.get("width", 64)), d, config.num_classes, classifier, text_head
    )


def _vit_rows(summary: dict, built, methods: tuple[str, ...], classifier: str, config) -> None:
    """A ViT: tuned blocks, bottlenecks, AFT share and the reference's per-block count."""
    from liftplus.model.backbone import image_projection
    from liftplus.model.peft import aft_ratio_used, method_layers, tuner_sizes
    from liftplus.model.text_head import text_head_counts, text_options

    num_classes, bottleneck, aft_loc = config.num_classes, config.bottleneck, config.aft_loc
    depth, d = summary["layers"], summary["width"]
    tuned = {m: method_layers(m, config.peft_layers, depth) for m in methods}
    sizes = tuner_sizes(methods, num_classes, depth, bottleneck, config.peft_layers)
    ratio = aft_ratio_used(config.aft_ratio, num_classes, len(tuned.get("aft", [])), d, aft_loc)
    mlp = built.backbone.visual.transformer.resblocks[0].block.mlp[0].out_features
    summary["peft"] = "+".join(methods)
    summary["tuned_layers"] = sorted(set().union(*tuned.values()))
    summary["bottlenecks"] = sizes
    if "aft" in methods:
        summary["aft_ratio"] = ratio
    text_head = 0
    if classifier == "text":
        backbone = built.backbone
        counts = text_head_counts(
            text_options(config),
            backbone.token_embedding.weight.shape[1],
            image_projection(backbone.visual).shape[1],
            d,
        )
        summary["text_head"] = counts
        text_head = sum(counts.values())
    summary["formula"] = reference_formula(
        methods, tuned, d, mlp, sizes, num_classes, classifier, ratio, aft_loc, text_head=text_head
    )
    if methods == ("adaptformer",) and summary["bottleneck"] is not None:
        summary["adaptformer_formula"] = adaptformer_formula(
            len(tuned["adaptformer"]), d, summary["bottleneck"], num_classes
        ) + (num_classes if classifier == "linear" else 0)


def _text_head_args(
    classifier: str,
    ctx_len: Optional[int],
    init: Optional[str],
    clip_adapter: bool,
    clip_adapter_dim: int,
    proj_tuning: bool,
) -> dict:
    """The text head's ModelConfig fields from the options; ParamsError for a bad value or for one
    given without ``--classifier text``."""
    given = [
        name
        for name, on in (
            ("--coop-ctx-len", ctx_len is not None),
            ("--coop-init", init is not None),
            ("--clip-adapter", clip_adapter),
            ("--clip-adapter-dim", clip_adapter_dim != 4),
            ("--proj-tuning", proj_tuning),
        )
        if on
    ]
    if classifier != "text":
        if given:
            raise ParamsError(f"{given[0]} applies to the text classifier only: add --classifier text")
        return {}
    if ctx_len is not None and not 0 <= ctx_len <= 75:
        raise ParamsError(f"--coop-ctx-len is {ctx_len}, expected 0 to 75")
    if init not in (None, "photo"):
        raise ParamsError(f"--coop-init is '{init}', expected photo (or leave it out for a random context)")
    if init == "photo" and ctx_len is not None:
        raise ParamsError("--coop-init photo fixes the context to 'a photo of a' and '.': leave out --coop-ctx-len")
    if clip_adapter_dim < 1:
        raise ParamsError(f"--clip-adapter-dim is {clip_adapter_dim}, expected a positive integer")
    return {
        "coop_ctx_len": 4 if ctx_len is None else ctx_len,
        "coop_init": init,
        "clip_adapter": clip_adapter,
        "clip_adapter_dim": clip_adapter_dim if clip_adapter else 4,
        "proj_tuning": proj_tuning,
    }


def _print_table(summary: dict) -> None:
    table = Table(
        title=f"{summary['model']} + {summary['peft']}, {summary['classifier']} head, K={summary['num_classes']}"
    )
    table.add_column("quantity")
    table.add_column("value", justify="right")
    tuned = summary["tuned_layers"]
    rows = [
        ("blocks L / width d", f"{summary['layers']} / {summary['width']}"),
        ("tuned blocks", "all" if len(tuned) == summary["layers"] else ", ".join(map(str, tuned)) or "none"),
        ("bottleneck r", ", ".join(f"{m} {r}" for m, r in summary["bottlenecks"].items()) or "-"),
    ]
    if "text_head" in summary:
        counts = summary["text_head"]
        rows += [
            ("text head: learnable context", f"{counts['context']:,}"),
            ("text head: CLIP-Adapter (image + text)", f"{counts['clip_adapter']:,}"),
            ("text head: projections (image + text)", f"{counts['proj_tuning']:,}"),
        ]
    if "aft_ratio" in summary:
        rows.append(("AFT ratio", "-" if summary["aft_ratio"] is None else f"{summary['aft_ratio']:.6g}"))
    rows += [
        ("total parameters (CLIP + tuners + head)", f"{summary['total_parameters']:,}"),
        ("image encoder + head", f"{summary['image_encoder_parameters']:,}"),
        ("trainable: PEFT", f"{summary['trainable_peft']:,}"),
        ("trainable: head", f"{summary['trainable_head']:,}"),
        ("trainable: other", f"{summary['trainable_other']:,}"),
        ("trainable: total", f"{summary['trainable_total']:,}"),
        ("trainable % of model", f"{summary['trainable_percent_of_model']:.3f}%"),
        ("trainable % of image encoder + head", f"{summary['trainable_percent_of_image_encoder']:.3f}%"),
    ]
    agrees = "agrees" if summary["formula"] == summary["trainable_total"] else "DIFFERS"
    rule = "block shapes + SSF + head" if summary.get("resnet") else "per-block shapes x tuned L + head"
    rows.append((f"reference formula ({rule})", f"{summary['formula']:,} ({agrees})"))
    if "adaptformer_formula" in summary:
        agrees = "agrees" if summary["adaptformer_formula"] == summary["trainable_total"] else "DIFFERS"
        rows.append(("L(2dr+r+3d+1) + Kd", f"{summary['adaptformer_formula']:,} ({agrees})"))
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)
