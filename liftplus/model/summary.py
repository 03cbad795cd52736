"""Parameter counts of a built model: what is trained, and what share of the whole that is."""

from __future__ import annotations

from typing import Any

from liftplus.model.build import LiftModel


def parameter_summary(model: LiftModel) -> dict[str, Any]:
    """Counts for a :class:`LiftModel`.

    ``total_parameters`` is the whole model (CLIP image and text towers, the
    tuners and the head); ``image_encoder_parameters`` the image encoder with
    its tuners plus the head, i.e. what classifies an image. Trainable
    parameters are split into ``peft`` (anything trainable inside the image
    encoder's blocks, and a CLIP ResNet's SSF), ``head`` and ``other``
    (should be 0). ``clip_parameters`` leaves out the tensors PEFT adds (a
    ResNet's full/BitFit train CLIP's own).
    """
    head_ids = {id(p) for p in model.head.parameters()}
    block_ids = {id(p) for module in model.peft_modules() for p in module.parameters()}
    trainable = {"peft": 0, "head": 0, "other": 0}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        group = "head" if id(p) in head_ids else "peft" if id(p) in block_ids else "other"
        trainable[group] += p.numel()
    tuner_parameters = sum(
        p.numel() for block in model.peft_blocks() for p in [*block.tuner.parameters(), *_prompt(block)]
    )
    resnet_tuner = getattr(model.backbone.visual, "tuner", None) if model.is_resnet else None
    if resnet_tuner is not None:
        tuner_parameters += sum(p.numel() for p in resnet_tuner.parameters())
    head_total = sum(p.numel() for p in model.head.parameters())
    total = sum(p.numel() for p in model.parameters())
    image_encoder = sum(p.numel() for p in model.backbone.visual.parameters()) + head_total
    trainable_total = sum(trainable.values())
    return {
        "model": model.config.name,
        "peft": model.config.peft,
        "classifier": model.config.classifier,
        "num_classes": model.config.num_classes,
        "layers": model.num_layers,
        "width": model.feature_dim,
        "bottleneck": model.bottleneck,
        "total_parameters": total,
        "clip_parameters": total - tuner_parameters - head_total,
        "image_encoder_parameters": image_encoder,
        "trainable_peft": trainable["peft"],
        "trainable_head": trainable["head"],
        "trainable_other": trainable["other"],
        "trainable_total": trainable_total,
        "trainable_percent_of_model": 100.0 * trainable_total / total,
        "trainable_percent_of_image_encoder": 100.0 * trainable_total / image_encoder,
    }


def _prompt(block) -> list:
    return [block.prompt] if block.prompt is not None else []
