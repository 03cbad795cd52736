"""Compact checkpoints: the trained tensors plus the config that rebuilds the rest.

The file itself (format tag, reading, the finite-tensor check) is :mod:`liftplus.checkpoint_file`;
``FORMAT`` and ``load_checkpoint`` are importable from here too.

A checkpoint holds only plain types and tensors, so it loads with
``torch.load(weights_only=True)``; anything else is refused, and so is a
tensor holding NaN or inf (a poisoned model). Loading is strict: a missing,
unexpected or mis-shaped tensor is an error, never a silent partial load.

A checkpoint's config says which model to build; before anything is built (or
a pretrained tag downloaded) the config is checked against the checkpoint's
own tensors, so that a small file cannot make a reader build a huge model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Optional

import open_clip
import torch
from pydantic import ValidationError

from liftplus.checkpoint_file import FORMAT, load_checkpoint
from liftplus.errors import CheckpointError, ParamsError
from liftplus.io import save_torch
from liftplus.model import timm_vit
from liftplus.model.backbone import backbone_fingerprint
from liftplus.model.build import LiftModel, ModelConfig, build_model
from liftplus.model.peft import Bottleneck, aft_count, aft_ratio_used, method_layers, tuned_blocks, tuner_sizes
from liftplus.model.resnet import check_resnet_config, resnet_vision_cfg, trained_shapes
from liftplus.model.text_head import text_head_shapes


def save_checkpoint(
    path: str | Path,
    model: LiftModel,
    config: Optional[ModelConfig] = None,
    extra: Optional[dict[str, Any]] = None,
) -> None:
    """Write ``model``'s trainable state and config to ``path`` atomically."""
    config = config or model.config
    payload = {
        "format": FORMAT,
        "config": config.to_dict(),
        "backbone_fingerprint": backbone_fingerprint(config.name, config.pretrained, config.seed),
        "state": {name: t.detach().cpu().clone() for name, t in model.trainable_state_dict().items()},
        "extra": extra or {},
    }
    save_torch(payload, path)


def load_trainable_state(model: LiftModel, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``'s trainable tensors; every key must match exactly."""
    expected = model.trainable_state_dict()
    missing, unexpected = _key_mismatch(expected, state)
    if missing:
        raise CheckpointError(f"{source}: missing key '{missing[0]}'" + _more(missing))
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key '{unexpected[0]}'" + _more(unexpected))
    for key, target in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(target.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{source}: key '{key}' has shape {shape}, the model expects {tuple(target.shape)}")
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key])


def _key_mismatch(expected: Iterable[str], given: Iterable[str]) -> tuple[list[str], list[str]]:
    """The keys ``expected`` lacks from ``given`` (missing) and ``given`` has beyond it (unexpected), in order."""
    expected, given = list(expected), list(given)
    expected_set, given_set = set(expected), set(given)
    return [k for k in expected if k not in given_set], [k for k in given if k not in expected_set]


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def checkpoint_classnames(extra: Any, num_classes: int, source: str | Path) -> list[str]:
    """The class names stored by training; the label numbers as names if there are none."""
    names = extra.get("classnames") if isinstance(extra, dict) else None
    if names is None:
        return [str(k) for k in range(num_classes)]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{source}: extra 'classnames' is not a list of strings")
    if len(names) != num_classes:
        raise CheckpointError(f"{source}: has {len(names)} class names for a {num_classes}-class model")
    return list(names)


_BLOCK_KEY = re.compile(r"backbone\.visual\.transformer\.resblocks\.(\d+)\.(.+)")


def _vision_tower(config: ModelConfig, path: Path) -> dict[str, int]:
    """Width, depth, MLP width and embedding size of ``config.name``'s image tower, from open_clip's
    JSON config: nothing is built, nothing downloaded (a timm ViT is built on the meta device)."""
    if timm_vit.is_timm_name(config.name):
        try:
            return timm_vit.tower_shape(config.name)
        except ParamsError as exc:
            raise CheckpointError(f"{path}: config 'name': {str(exc).removeprefix('model.name: ')}") from None
    model_cfg = open_clip.get_model_config(config.name)
    if model_cfg is None:
        raise CheckpointError(f"{path}: config 'name': unknown model '{config.name}' (not an open_clip model config)")
    vision = model_cfg.get("vision_cfg") or {}
    width, layers = vision.get("width", 768), vision.get("layers", 12)
    if vision.get("timm_model_name") or not isinstance(width, int) or not isinstance(layers, int):
        raise CheckpointError(f"{path}: config 'name': {config.name} has no ViT image tower")
    return {
        "width": width,
        "layers": layers,
        "mlp": int(width * vision.get("mlp_ratio", 4.0)),
        "embed": model_cfg.get("embed_dim", width),
    }


def _block_shapes(
    d: int, mlp: int, sizes: Mapping[str, int], aft_ratio: Optional[float] = None
) -> dict[str, tuple[int, ...]]:
    """Shape of each tensor a PEFT method trains in one block (``d`` width, ``sizes`` the bottleneck or
    prompt length of each sized method, ``aft_ratio`` the AFT share), by its key after ``resblocks.N.``;
    the reference for :func:`check_config_fits_state`."""
    shapes: dict[str, tuple[int, ...]] = {"tuner.adaptformer.scale": ()}
    prompt = sizes.get("vpt-deep", sizes.get("vpt-shallow"))
    if prompt is not None:
        shapes["prompt"] = (prompt, d)
    for tuner in ("adaptformer", "adapter"):
        shapes |= Bottleneck.shapes(f"tuner.{tuner}", d, sizes.get(tuner, 0))
    for tuner in ("lora_q", "lora_v"):
        r = sizes.get("lora", 0)
        shapes |= {f"tuner.{tuner}.down": (d, r), f"tuner.{tuner}.up": (r, d)}
    for tuner, size in (("ssf_attn_in", 3 * d), ("ssf_attn_out", d), ("ssf_mlp_in", mlp), ("ssf_mlp_out", d)):
        shapes |= {f"tuner.{tuner}.scale": (size,), f"tuner.{tuner}.shift": (size,)}
    if aft_ratio is not None:
        for tuner, out, inp in (
            ("aft_attn_in", 3 * d, d),
            ("aft_attn_out", d, d),
            ("aft_mlp_in", mlp, d),
            ("aft_mlp_out", d, mlp),
        ):
            shapes |= {
                f"tuner.{tuner}.weight": (aft_count(out * inp, aft_ratio),),
                f"tuner.{tuner}.bias": (aft_count(out, aft_ratio),),
            }
    for norm in ("ln_1", "ln_2"):
        shapes |= {f"block.{norm}.weight": (d,), f"block.{norm}.bias": (d,)}
    return shapes | {
        "block.attn.in_proj_weight": (3 * d, d),
        "block.attn.in_proj_bias": (3 * d,),
        "block.attn.out_proj.weight": (d, d),
        "block.attn.out_proj.bias": (d,),
        "block.mlp.c_fc.weight": (mlp, d),
        "block.mlp.c_fc.bias": (mlp,),
        "block.mlp.c_proj.weight": (d, mlp),
        "block.mlp.c_proj.bias": (d,),
        "block.ls_1.gamma": (d,),
        "block.ls_2.gamma": (d,),
    }


def _head_shapes(config: ModelConfig, tower: dict[str, int]) -> dict[str, tuple[int, ...]]:
    k = config.num_classes
    if config.classifier == "zero-shot":
        return {"head.text_features": (k, tower["embed"])}
    if config.classifier == "text":
        return text_head_shapes(config)
    return {"head.weight": (k, tower["width"])} | ({"head.bias": (k,)} if config.classifier == "linear" else {})


def _aft_ratio(config: ModelConfig, tower: dict[str, int]) -> Optional[float]:
    """The AFT share ``insert_peft`` uses: the config's, or the reference's default for the tuned blocks."""
    if "aft" not in config.methods:
        return None
    tuned = len(method_layers("aft", config.peft_layers, tower["layers"]))
    return aft_ratio_used(config.aft_ratio, config.num_classes, tuned, tower["width"], config.aft_loc)


def check_config_fits_state(config: ModelConfig, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """CheckpointError unless ``config`` describes the model ``state`` was saved from: the head is
    (classes x width), every tuner tensor matches the width, bottleneck and AFT share, the blocks with
    tensors are the blocks ``peft_layers`` tunes.

    Runs before the model is built, so a config naming a far larger model than its tensors
    (ViT-bigG-14, a bottleneck of 100000, 10**7 classes) is refused at the cost of reading a
    JSON config. Keys it does not know are left to the strict load after the build.
    """
    path = Path(path)
    if resnet_vision_cfg(config.name) is not None:
        _check_resnet_state(config, state, path)
        return
    tower = _vision_tower(config, path)
    layers = tower["layers"]
    peft = "+".join(config.methods)
    try:
        expected_blocks = tuned_blocks(config.methods, config.peft_layers, layers)
        sizes = tuner_sizes(config.methods, config.num_classes, layers, config.bottleneck, config.peft_layers)
    except ParamsError as exc:
        raise CheckpointError(f"{path}: config 'peft_layers': {str(exc).removeprefix('model.peft_layers: ')}") from None
    r = next(iter(sizes.values()), None)
    described = f"{config.name} with {config.num_classes} classes" + (f", bottleneck {r}" if r else "")

    def check_shape(key: str, shape: Optional[tuple[int, ...]]) -> None:
        if shape is not None and tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"{path}: key '{key}' has shape {tuple(state[key].shape)}, expected {shape} ({described})"
            )

    _check_head(config, tower, state, path, check_shape)
    per_block = _block_shapes(tower["width"], tower["mlp"], sizes, _aft_ratio(config, tower))
    blocks: set[int] = set()
    for key in state:
        block = _BLOCK_KEY.fullmatch(key)
        if block is None:
            continue
        index = int(block.group(1))
        if index >= layers:
            raise CheckpointError(f"{path}: key '{key}' is for block {index}, {config.name} has {layers} blocks")
        blocks.add(index)
        check_shape(key, per_block.get(block.group(2)))
    if len(blocks) != len(expected_blocks):
        raise CheckpointError(
            f"{path}: state has {peft} tensors in {len(blocks)} blocks, "
            f"{config.name} has {len(expected_blocks)} to tune"
        )
    if sorted(blocks) != expected_blocks:
        raise CheckpointError(
            f"{path}: state has {peft} tensors in blocks {sorted(blocks)}, the config tunes {expected_blocks}"
        )


def _check_head(
    config: ModelConfig, tower: dict[str, int], state: Mapping[str, torch.Tensor], path: Path, check_shape
) -> None:
    """Every head tensor of ``config`` is in ``state``, in the shape ``check_shape`` expects."""
    for key, shape in _head_shapes(config, tower).items():
        if key not in state:
            raise CheckpointError(f"{path}: missing key '{key}'")
        check_shape(key, shape)


def _check_resnet_state(config: ModelConfig, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """:func:`check_config_fits_state` for a CLIP ResNet: the image-tower tensors in ``state`` are exactly
    those the config's PEFT trains (see :func:`~liftplus.model.resnet.trained_shapes`), in their shapes,
    and the head is (classes x embedding size)."""
    peft = "+".join(config.methods)
    try:
        check_resnet_config(config.name, config.methods, config.peft_layers)
    except ParamsError as exc:
        field, _, message = str(exc).partition(": ")
        raise CheckpointError(f"{path}: config '{field.removeprefix('model.')}': {message}") from None
    expected = trained_shapes(config.name, config.methods)
    embed = open_clip.get_model_config(config.name).get("embed_dim", 512)
    described = f"{config.name} + {peft} with {config.num_classes} classes"

    def check_shape(key: str, shape: Optional[tuple[int, ...]]) -> None:
        if shape is not None and tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"{path}: key '{key}' has shape {tuple(state[key].shape)}, expected {shape} ({described})"
            )

    _check_head(config, {"width": embed, "embed": embed}, state, path, check_shape)
    visual = [key for key in state if key.startswith("backbone.visual.")]
    missing, unexpected = _key_mismatch(expected, visual)
    if unexpected:
        raise CheckpointError(f"{path}: key '{unexpected[0]}' is not trained by {described}" + _more(unexpected))
    if missing:
        raise CheckpointError(f"{path}: missing key '{missing[0]}' ({described})" + _more(missing))
    for key in visual:
        check_shape(key, expected[key])


def model_from_checkpoint(
    path: str | Path, num_classes: Optional[int] = None
) -> tuple[LiftModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, check the backbone, load the weights.

    Everything that can be checked without building the model is checked first.
    """
    ckpt = load_checkpoint(path)
    try:
        config = ModelConfig.model_validate(ckpt["config"])
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise CheckpointError(f"{path}: config '{key}': {first['msg']}") from None
    if num_classes is not None and num_classes != config.num_classes:
        raise CheckpointError(f"{path}: checkpoint has {config.num_classes} classes, the data has {num_classes}")
    check_config_fits_state(config, ckpt["state"], path)
    checkpoint_classnames(ckpt.get("extra"), config.num_classes, path)  # num_classes now bounded by the head's rows
    fingerprint = backbone_fingerprint(config.name, config.pretrained, config.seed)
    if fingerprint != ckpt["backbone_fingerprint"]:
        raise CheckpointError(
            f"{path}: trained on a different backbone than {config.name} pretrained={config.pretrained} "
            f"(fingerprint {ckpt['backbone_fingerprint'][:12]} != {fingerprint[:12]})"
        )
    model = build_model(config)
    load_trainable_state(model, ckpt["state"], source=str(path))
    return model, config, ckpt
