"""The model over a dataset without gradients: evaluation's logits (with TTE crops averaged),
validation's scores and the class-mean head init's features all run through :func:`run_inference`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from liftplus.data.input_path import finish_batch
from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
from liftplus.progress import Progress
from liftplus.runtime import autocast_dtype, half_weights, to_half_weights


@torch.inference_mode()
def run_inference(
    forward: Callable[[torch.Tensor], torch.Tensor],
    dataset: ShardIndex,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
    progress: bool,
    desc: str,
    subset: Optional[list[int]] = None,
    prefetch: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``forward`` on every sample (or ``subset``) in order, with the labels.

    A sample may be a stack of crops (TTE: ``(n_crops, C, H, W)``); the crops of
    a batch go through the model as one ``n_crops * B`` forward and their
    outputs are averaged, as the reference averages the logits of each crop.
    """
    amp_dtype = autocast_dtype(precision, device)
    sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=False, subset=subset)
    loader = make_loader(dataset, sampler, workers, pin_memory=device.type == "cuda", prefetch=prefetch)
    outputs, all_labels = [], []
    shown = Progress(desc, sampler.num_samples, unit="img", enabled=progress)
    for images, labels in loader:
        images = finish_batch(dataset.transform, images, device)
        outputs.append(forward_crops(forward, images, amp_dtype).cpu())
        all_labels.append(labels)
        shown.update(
            len(labels),
            line=lambda: f"{desc}: {shown.count:,}/{shown.total:,} images {shown.rate():,.0f} img/s ETA {shown.eta()}",
        )
    shown.close()
    return torch.cat(outputs), torch.cat(all_labels)


def forward_crops(
    forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, amp_dtype: Optional[torch.dtype]
) -> torch.Tensor:
    """Float outputs of ``forward`` on a batch; a batch of crop stacks ``(B, n, C, H, W)`` goes
    through as one ``n * B`` forward and each sample's ``n`` outputs are averaged."""
    crops = images.dim() == 5
    if crops:
        b, n = images.shape[:2]
        images = images.flatten(0, 1)
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = forward(images).float()
    return out.view(b, n, -1).mean(dim=1) if crops else out


def predict_logits(
    model: nn.Module,
    dataset: ShardIndex,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str = "auto",
    progress: bool = True,
    prefetch: int = 4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (TTE-averaged for stacked crops) and labels of every sample, in dataset order.

    ``precision`` fp16 on CUDA converts ``model`` to fp16 weights in place (see :func:`to_half_weights`).
    """
    precision = ready_for_test(model, device, precision)
    return run_inference(
        model, dataset, batch_size, workers, device, precision, progress, "evaluate", prefetch=prefetch
    )


def ready_for_test(model: nn.Module, device: torch.device, precision: str) -> str:
    """``model`` on ``device`` in eval mode, in the reference's fp16 test weights where ``precision`` asks
    for them (:func:`~liftplus.runtime.half_weights`); the autocast precision left to apply on top."""
    model.to(device).eval()
    if half_weights(precision, device):
        to_half_weights(model)
        return "fp32"  # the weights are fp16 already: no autocast on top
    return precision


def predict_features(
    model: nn.Module,
    dataset: ShardIndex,
    subset: list[int],
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str = "auto",
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Head-input features and labels of the samples in ``subset``."""
    model.to(device).eval()
    return run_inference(model.features, dataset, batch_size, workers, device, precision, progress, "features", subset)
