"""Class-name text embeddings: the semantic head init and the zero-shot classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from liftplus.errors import ParamsError
from liftplus.model.backbone import image_projection

DEFAULT_TEMPLATE = "a photo of a {}."


def class_prompts(classnames: Sequence[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One prompt per class, underscores in names read as spaces (as the reference)."""
    return [template.format(name.replace("_", " ")) for name in classnames]


def encode_text_init(
    model: nn.Module,
    classnames: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 256,
    model_name: Optional[str] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode the class prompts with the frozen text tower of ``model``.

    ``model`` is a :class:`~liftplus.model.build.LiftModel` (its config names
    the tokenizer) or a bare open_clip model with ``model_name`` given.

    Returns ``(weights, text_features)``:
    ``text_features`` [K, embed_dim] are the projected text embeddings
    (``encode_text``, normalised), used by the zero-shot head; ``weights``
    [K, image width] are those mapped back into the image feature space
    through the image projection, ``normalize(text_features @ proj.T)``, the
    semantic init of the classifier (reference: ``init_classifier_weight``).
    A CLIP ResNet has no image projection (its feature is in the joint space
    already): its ``weights`` are the ``text_features`` themselves.
    """
    backbone = getattr(model, "backbone", model)
    if not callable(getattr(backbone, "encode_text", None)):
        name = model_name or getattr(getattr(model, "config", None), "name", type(backbone).__name__)
        raise ParamsError(f"model.name: {name} has no text tower, so class names cannot be encoded (use class_mean)")
    tokenizer = open_clip.get_tokenizer(model_name or model.config.name)
    prompts = class_prompts(classnames, template)
    device = backbone.token_embedding.weight.device
    projection = image_projection(backbone.visual)
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            tokens = tokenizer(prompts[start : start + batch_size]).to(device)
            chunks.append(backbone.encode_text(tokens).float())
        text_features = F.normalize(torch.cat(chunks), dim=-1)
        weights = text_features if projection is None else F.normalize(text_features @ projection.float().T, dim=-1)
    return weights.clone(), text_features.clone()
