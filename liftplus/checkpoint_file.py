"""The adapter checkpoint file: its format tag, and reading it back with every tensor checked.

Reading needs torch only, not the model code (open_clip), so the register stage opens a
checkpoint in a fraction of the time the model stages take to start. Writing, and turning a
checkpoint back into a model, are :mod:`liftplus.model.checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import torch

from liftplus.errors import CheckpointError
from liftplus.io import load_torch

FORMAT = "liftplus-adapter/1"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    ckpt = load_torch(path, "torch checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a liftplus adapter checkpoint (expected format '{FORMAT}')")
    for key, kind in (("config", dict), ("state", dict), ("backbone_fingerprint", str)):
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"{path}: checkpoint has no valid '{key}'")
    _check_tensors_finite(ckpt["state"], path)
    return ckpt


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The name of the first tensor holding NaN or inf, or None; one device sync for them all."""
    floating = [(name, t) for name, t in tensors.items() if t.is_floating_point() or t.is_complex()]
    if not floating:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in floating]).tolist()
    return next((name for (name, _), ok in zip(floating, finite, strict=True) if not ok), None)


def _check_tensors_finite(state: Mapping[str, Any], path: Path) -> None:
    not_tensor = next((key for key, value in state.items() if not isinstance(value, torch.Tensor)), None)
    if not_tensor is not None:
        raise CheckpointError(f"{path}: state '{not_tensor}' is not a tensor")
    poisoned = first_non_finite(state)
    if poisoned is not None:
        raise CheckpointError(f"{path}: tensor '{poisoned}' holds NaN or inf values")
