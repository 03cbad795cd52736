"""Compact checkpoints: the trained tensors plus the config that rebuilds the rest.

A checkpoint holds only plain types and tensors, so it loads with
``torch.load(weights_only=True)``; anything else is refused. Loading is
strict: a missing, unexpected or mis-shaped tensor is an error, never a
silent partial load.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from pydantic import ValidationError

from liftplus.errors import CheckpointError
from liftplus.io import save_torch
from liftplus.model.backbone import backbone_fingerprint
from liftplus.model.build import LiftModel, ModelConfig, build_model

FORMAT = "liftplus-adapter/1"


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refused, holds objects other than tensors and plain types (weights_only load)"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, IndexError, zip errors... on bytes that are no checkpoint
        raise CheckpointError(f"{path}: corrupt or not a torch checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a liftplus adapter checkpoint (expected format '{FORMAT}')")
    for key, kind in (("config", dict), ("state", dict), ("backbone_fingerprint", str)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint has no valid '{key}'")
    return ckpt


def load_trainable_state(model: LiftModel, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``state`` into ``model``'s trainable tensors; every key must match exactly."""
    expected = model.trainable_state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{source}: missing key '{missing[0]}'" + _more(missing))
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key '{unexpected[0]}'" + _more(unexpected))
    for key, target in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(target.shape):
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(
                f"{source}: key '{key}' has shape {shape}, the model expects {tuple(target.shape)}"
            )
    with torch.no_grad():
        for key, target in expected.items():
            target.copy_(state[key])


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def model_from_checkpoint(
    path: str | Path, num_classes: Optional[int] = None
) -> tuple[LiftModel, ModelConfig, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as, check the backbone, load the weights."""
    ckpt = load_checkpoint(path)
    try:
        config = ModelConfig.model_validate(ckpt["config"])
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise CheckpointError(f"{path}: config '{key}': {first['msg']}") from None
    if num_classes is not None and num_classes != config.num_classes:
        raise CheckpointError(f"{path}: checkpoint has {config.num_classes} classes, the data has {num_classes}")
    fingerprint = backbone_fingerprint(config.name, config.pretrained, config.seed)
    if fingerprint != ckpt["backbone_fingerprint"]:
        raise CheckpointError(
            f"{path}: trained on a different backbone than {config.name} pretrained={config.pretrained} "
            f"(fingerprint {ckpt['backbone_fingerprint'][:12]} != {fingerprint[:12]})"
        )
    model = build_model(config)
    load_trainable_state(model, ckpt["state"], source=str(path))
    return model, config, ckpt
