"""Training losses for long-tail classification, as the reference's utils/losses.py.

Class priors and margins are buffers, so ``loss.to(device)`` moves them and they
stay float32 under autocast (the adjusted logits are computed in float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liftplus.errors import DataError, ParamsError

LOSSES = ("la", "ce", "focal", "ldam", "bs", "cb", "grw", "lade")


def checked_counts(class_counts: Sequence[int]) -> torch.Tensor:
    """Training images per class as float32; every class needs at least one (log 0 is -inf)."""
    counts = torch.as_tensor(class_counts, dtype=torch.float32)
    if counts.ndim != 1 or counts.numel() == 0:
        raise DataError(f"class counts must be a non-empty list, got shape {tuple(counts.shape)}")
    bad = torch.nonzero(~((counts > 0) & torch.isfinite(counts))).flatten().tolist()
    if bad:
        raise DataError(
            f"class {bad[0]} has {counts[bad[0]].item():g} training images; a long-tail loss needs at least 1 per class"
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


class ReweightedLoss(nn.Module):
    """Cross-entropy with a weight per class, normalised to mean 1 (CB and GRW)."""

    def __init__(self, class_weights: torch.Tensor):
        super().__init__()
        self.register_buffer("class_weights", class_weights / class_weights.mean())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.to(self.class_weights.dtype), labels, weight=self.class_weights)


def class_balanced_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced loss (Cui et al. 2019): ``(1 - beta) / (1 - beta ** n_c)``, the inverse effective number."""
    return (1.0 - beta) / (1.0 - beta ** checked_counts(class_counts))


def generalized_reweight_weights(class_counts: Sequence[int], exp_scale: float = 1.0) -> torch.Tensor:
    """Generalized re-weighting (Zhang et al. 2021, DisAlign): ``prior_c ** -exp_scale``."""
    return 1.0 / class_prior(class_counts) ** exp_scale


class LADELoss(nn.Module):
    """Label distribution disentangling (Hong et al. 2021), as the reference computes it:
    logit-adjusted CE plus ``estim_loss_weight`` x the negated, prior-weighted ReMINE bound."""

    def __init__(self, class_counts: Sequence[int], remine_lambda: float = 0.1, estim_loss_weight: float = 0.1):
        super().__init__()
        prior = class_prior(class_counts)
        self.num_classes = len(prior)
        self.register_buffer("prior", prior)
        self.balanced_prior = 1.0 / self.num_classes
        self.remine_lambda = remine_lambda
        self.estim_loss_weight = estim_loss_weight

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits + self.prior.log().unsqueeze(0), labels)
        in_class = labels == torch.arange(self.num_classes, device=labels.device).view(-1, 1)  # C x N
        spread_p = logits.T * in_class
        spread_q = (logits - torch.log(self.prior + 1e-9) + math.log(self.balanced_prior + 1e-9)).T
        samples_per_class = in_class.sum(-1).float()
        first = spread_p.sum(-1) / (samples_per_class + 1e-8)
        second = torch.logsumexp(spread_q, -1) - math.log(spread_p.size(-1))
        bound = first - second - self.remine_lambda * second**2
        return ce + self.estim_loss_weight * -(bound * self.prior).sum()


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
    if name == "cb":
        return ReweightedLoss(class_balanced_weights(class_counts))
    if name == "grw":
        return ReweightedLoss(generalized_reweight_weights(class_counts))
    if name == "lade":
        return LADELoss(class_counts)
    raise ParamsError(f"train.loss is {name!r}, expected one of {', '.join(LOSSES)}")
