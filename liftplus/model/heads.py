"""Classifier heads on the image feature, and the ways to initialise them.

The classifiers follow the reference's ``models/classifiers.py``; the weight
initialisations follow its ``trainer.py`` (``build_tuner``): semantic (class
text embeddings mapped into the image feature space, see
:mod:`liftplus.model.text`), class-mean features, a linear probe, or the
random reset.
"""

from __future__ import annotations

from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from liftplus.errors import CheckpointError, DataError
from liftplus.model.text_head import TextHead, TextOptions

ClassifierName = Literal["cosine", "linear", "l2", "layernorm", "zero-shot", "text"]


def _reset_weight(weight: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Rows uniform in [-1, 1] rescaled to unit L2 norm (``renorm_(2, 0, 1e-5).mul_(1e5)``)."""
    return weight.uniform_(-1, 1, generator=generator).renorm_(2, 0, 1e-5).mul_(1e5)


class LinearClassifier(nn.Linear):
    def __init__(self, feature_dim: int, num_classes: int, bias: bool = True, dtype=None, device=None):
        super().__init__(feature_dim, num_classes, bias=bias, dtype=dtype, device=device)

    def reset_parameters(self) -> None:
        with torch.no_grad():
            _reset_weight(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)


class CosineClassifier(LinearClassifier):
    """``scale * normalize(f) @ normalize(W).T``, no bias."""

    def __init__(self, feature_dim: int, num_classes: int, scale: float = 25.0, dtype=None, device=None):
        super().__init__(feature_dim, num_classes, bias=False, dtype=dtype, device=device)
        self.scale = scale

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(self.scale * F.normalize(features, dim=-1), F.normalize(self.weight, dim=-1))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale}"


class L2NormClassifier(LinearClassifier):
    """``f @ normalize(W).T``, no bias."""

    def __init__(self, feature_dim: int, num_classes: int, dtype=None, device=None):
        super().__init__(feature_dim, num_classes, bias=False, dtype=dtype, device=device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, F.normalize(self.weight, dim=-1))


class LayerNormClassifier(LinearClassifier):
    """The reference's ``LayerNormClassifier``: ``LN(f) @ normalize(W).T``, the LayerNorm without affine
    parameters (eps 1e-12), no bias."""

    def __init__(self, feature_dim: int, num_classes: int, dtype=None, device=None):
        super().__init__(feature_dim, num_classes, bias=False, dtype=dtype, device=device)
        self.ln = nn.LayerNorm(feature_dim, eps=1e-12, elementwise_affine=False, dtype=dtype, device=device)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(self.ln(features), F.normalize(self.weight, dim=-1))


class ZeroShotHead(nn.Module):
    """CLIP zero-shot: ``exp(logit_scale) * normalize(f @ proj) @ normalize(T).T``.

    ``T`` are the classes' projected text embeddings (kept, normalised, in the
    state dict); the image projection and logit scale are copies of the frozen
    backbone's and are not saved. ``projection`` None (a CLIP ResNet, whose
    feature is projected already): ``f`` is used as it is, ``embed_dim`` wide.
    """

    def __init__(
        self,
        projection: Optional[torch.Tensor],
        logit_scale: torch.Tensor,
        num_classes: int,
        embed_dim: Optional[int] = None,
    ):
        super().__init__()
        if projection is None:
            if embed_dim is None:
                raise ValueError("the zero-shot head needs the image projection or, without one, embed_dim")
            self.projection = None
        else:
            embed_dim = projection.shape[1]
            self.register_buffer("projection", projection.detach().clone(), persistent=False)
        self.register_buffer("logit_scale", logit_scale.detach().clone(), persistent=False)
        like = logit_scale if projection is None else projection
        self.register_buffer("text_features", torch.zeros(num_classes, embed_dim, dtype=like.dtype, device=like.device))

    @property
    def weight(self) -> torch.Tensor:
        return self.text_features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            features = features @ self.projection.to(features.dtype)
        image = F.normalize(features, dim=-1)
        return self.logit_scale.exp() * image @ self.text_features.to(image.dtype).T


def make_head(
    classifier: str,
    feature_dim: int,
    num_classes: int,
    scale: float = 25.0,
    projection: Optional[torch.Tensor] = None,
    logit_scale: Optional[torch.Tensor] = None,
    backbone: Optional[nn.Module] = None,
    text: Optional[TextOptions] = None,
) -> nn.Module:
    """The head ``classifier`` names; ``zero-shot`` needs the ``logit_scale`` and the image ``projection``
    (None for a CLIP ResNet: its ``feature_dim`` wide feature is in the joint space already), ``text``
    (the text-tower classifier, :mod:`liftplus.model.text_head`) the ``backbone`` and ``text`` options."""
    if classifier == "cosine":
        return CosineClassifier(feature_dim, num_classes, scale=scale)
    if classifier == "linear":
        return LinearClassifier(feature_dim, num_classes)
    if classifier == "l2":
        return L2NormClassifier(feature_dim, num_classes)
    if classifier == "layernorm":
        return LayerNormClassifier(feature_dim, num_classes)
    if classifier == "zero-shot":
        if logit_scale is None:
            raise ValueError("the zero-shot head needs the logit scale")
        return ZeroShotHead(projection, logit_scale, num_classes, embed_dim=feature_dim)
    if classifier == "text":
        if backbone is None or text is None:
            raise ValueError("the text head needs the backbone and its text options")
        return TextHead(backbone, num_classes, text)
    raise ValueError(f"unknown classifier '{classifier}'")


def set_head_weights(head: nn.Module, weights: torch.Tensor, source: str = "head weights") -> None:
    """Load class weights [K, d] into ``head``, normalised, as the reference's ``init_classifier_weight``.

    For the zero-shot head ``weights`` are the projected text features [K, embed_dim].
    """
    target = head.weight
    if tuple(weights.shape) != tuple(target.shape):
        raise CheckpointError(
            f"{source}: shape {tuple(weights.shape)} does not match the head's {tuple(target.shape)} "
            "(classes x feature dim)"
        )
    with torch.no_grad():
        target.copy_(F.normalize(weights.to(target.dtype), dim=-1))


def _check_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    labels = labels.long().cpu()
    present = torch.bincount(labels, minlength=num_classes)
    if len(present) > num_classes:
        raise DataError(f"label {int(labels.max())} out of range for {num_classes} classes")
    missing = (present == 0).nonzero().flatten().tolist()
    if missing:
        raise DataError(
            f"no training features for class {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ": cannot initialise the head from image features"
        )
    return labels


def class_mean_weights(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised per-class mean of the image features: [K, d]."""
    labels = _check_labels(labels, num_classes)
    features = features.detach().float().cpu()
    sums = torch.zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).unsqueeze(1).float()
    return F.normalize(sums / counts, dim=-1)


def linear_probe_weights(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Normalised ``coef_`` of an L2 logistic regression (lbfgs, 100 iterations, balanced classes)."""
    from sklearn.linear_model import LogisticRegression

    labels = _check_labels(labels, num_classes)
    x = features.detach().float().cpu().numpy()
    clf = LogisticRegression(solver="lbfgs", max_iter=100, C=1.0, class_weight="balanced")  # L2 is the default penalty
    clf.fit(x, labels.numpy())
    coef = clf.coef_
    if coef.shape[0] == 1:  # binary: sklearn keeps one row for the positive class
        coef = np.concatenate([-coef, coef])
    weights = torch.zeros(num_classes, x.shape[1])
    weights[torch.as_tensor(clf.classes_)] = torch.from_numpy(coef).float()
    return F.normalize(weights, dim=-1)


def random_weights(num_classes: int, feature_dim: int, seed: int = 0) -> torch.Tensor:
    """The reference's classifier reset, from its own generator."""
    generator = torch.Generator().manual_seed(seed)
    return _reset_weight(torch.empty(num_classes, feature_dim), generator=generator)
