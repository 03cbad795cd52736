"""Training losses for long-tail classification, as the reference's utils/losses.py.

Class priors and margins are buffers, so ``loss.to(device)`` moves them and they
stay float32 under autocast (the adjusted logits are computed in float32).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liftplus.errors import DataError, ParamsError

LOSSES = ("la", "ce", "focal", "ldam", "bs")


def checked_counts(class_counts: Sequence[int]) -> torch.Tensor:
    """Training images per class as float32; every class needs at least one (log 0 is -inf)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    if counts.ndim != 1 or counts.numel() == 0:
        raise DataError(f"class counts must be a non-empty list, got shape {tuple(counts.shape)}")
    bad = torch.nonzero(~((counts > 0) & torch.isfinite(counts))).flatten().tolist()
    if bad:
        raise DataError(
            f"class {bad[0]} has {counts[bad[0]].item():g} training images; "
            "a long-tail loss needs at least 1 per class"
        )
    return counts


def class_prior(class_counts: Sequence[int]) -> torch.Tensor:
    """Training class frequencies ``counts / sum``."""
    counts = checked_counts(class_counts)
    return counts / counts.sum()


class LogitAdjustedLoss(nn.Module):
    """``CE(logits + tau * log(prior), y)`` (Menon et al. 2021); tau = 1 is balanced softmax."""

    def __init__(self, class_counts: Sequence[int], tau: float = 1.0):
        super().__init__()
        self.tau = tau
        self.register_buffer("log_prior", class_prior(class_counts).log())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.tau * self.log_prior, labels)


class FocalLoss(nn.Module):
    """``mean((1 - p_y)**gamma * CE)`` on per-sample cross-entropy (Lin et al. 2017)."""

    def __init__(self, gamma: float = 2.0):
        super().__init__()
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, labels, reduction="none")
        p = torch.exp(-ce)
        return ((1 - p) ** self.gamma * ce).mean()


class LDAMLoss(nn.Module):
    """Label-distribution-aware margin (Cao et al. 2019): subtract ``scale * m_y`` from the true logit.

    ``m_c ∝ counts_c ** -1/4``, largest ``max_m``; the logits are already scaled, so only
    the margin is multiplied by ``scale``.
    """

    def __init__(self, class_counts: Sequence[int], max_m: float = 0.5, scale: float = 25.0):
        super().__init__()
        margins = 1.0 / checked_counts(class_counts).sqrt().sqrt()
        self.register_buffer("margins", margins * (max_m / margins.max()))
        self.scale = scale

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        true_class = F.one_hot(labels, logits.shape[1]).bool()
        shifted = logits - self.scale * self.margins[labels].unsqueeze(1)
        return F.cross_entropy(torch.where(true_class, shifted, logits), labels)


def build_loss(name: str, class_counts: Sequence[int], tau: float = 1.0, scale: float = 25.0) -> nn.Module:
    """The training loss ``name`` (params ``train.loss``); ``scale`` is the classifier's logit scale (LDAM)."""
    if name == "la":
        return LogitAdjustedLoss(class_counts, tau)
    if name == "bs":
        return LogitAdjustedLoss(class_counts, 1.0)
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "focal":
        return FocalLoss()
    if name == "ldam":
        return LDAMLoss(class_counts, scale=scale)
    raise ParamsError(f"train.loss is {name!r}, expected one of {', '.join(LOSSES)}")
