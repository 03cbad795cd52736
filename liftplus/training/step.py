"""One micro-batch of training, as :func:`liftplus.training.loop.fit` runs it and the benchmarks time it.

Kept apart from the loop (and from everything the loop needs besides: states, validation,
metrics) so a benchmark on a machine with PyTorch alone times the very step training runs.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Optional

import torch
from torch import nn

from liftplus.errors import TrainingError


class NonFiniteLoss(TrainingError):
    """The loss of a micro-batch is NaN or infinite; nothing was stepped. ``fit`` says where."""

    def __init__(self, value: float):
        super().__init__(f"loss is {value}")
        self.value = value


def train_step(
    step_model: nn.Module,
    loss_fn: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: Optional[torch.amp.GradScaler] = None,
    amp_dtype: Optional[torch.dtype] = None,
    accum_steps: int = 1,
    last_of_step: bool = True,
    sync: AbstractContextManager = contextlib.nullcontext(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward under autocast (``amp_dtype``), the loss in float32 (refused when not finite),
    backward of ``loss / accum_steps`` (scaled when there is an fp16 ``scaler``), and on the
    step's last micro-batch the optimizer step and ``zero_grad``. Returns the loss and logits.

    ``sync``: DDP's ``no_sync()`` on micro-batches that must not all-reduce their gradients.
    """
    with sync, torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = step_model(images)
        loss = loss_fn(logits.float(), labels)
    if not torch.isfinite(loss):
        raise NonFiniteLoss(loss.item())
    scaled = loss / accum_steps
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    if last_of_step:
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss, logits
