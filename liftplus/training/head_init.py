"""The classifier's starting weights: read the init_head stage's file, or compute from images.

``text_init.pt`` records the class names and the backbone fingerprint it was
made with; a train run whose classes or backbone differ refuses it instead of
silently training a head that belongs to another dataset or model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from liftplus.errors import CheckpointError
from liftplus.io import load_torch, save_torch

TEXT_INIT_FORMAT = "liftplus-text-init/1"


def save_text_init(
    path: str | Path,
    *,
    weight: torch.Tensor,
    text_features: torch.Tensor,
    classnames: Sequence[str],
    template: str,
    fingerprint: str,
) -> None:
    payload = {
        "format": TEXT_INIT_FORMAT,
        "weight": weight.detach().float().cpu().contiguous(),
        "text_features": text_features.detach().float().cpu().contiguous(),
        "classnames": list(classnames),
        "template": template,
        "backbone_fingerprint": fingerprint,
    }
    save_torch(payload, path)


def load_text_init(path: str | Path, classnames: Sequence[str], fingerprint: str) -> dict:
    """The init file's content, after checking it belongs to these classes and this backbone."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: head init not found; run the init_head stage (dvc repro init_head)")
    payload = load_torch(path, "head init", "; rerun init_head")
    if not isinstance(payload, dict) or payload.get("format") != TEXT_INIT_FORMAT:
        raise CheckpointError(f"{path}: not a liftplus head init (format {TEXT_INIT_FORMAT} expected)")
    if list(payload["classnames"]) != list(classnames):
        theirs, ours = payload["classnames"], list(classnames)
        diff = next((i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b), min(len(theirs), len(ours)))
        raise CheckpointError(
            f"{path}: made for other class names ({len(theirs)} classes, first difference at label {diff}); "
            f"the shards have {len(ours)} — rerun init_head"
        )
    if payload["backbone_fingerprint"] != fingerprint:
        raise CheckpointError(f"{path}: made with another backbone (fingerprint differs); rerun init_head")
    return payload
