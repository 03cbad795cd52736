"""CLIP ResNet image encoders (open_clip ``ModifiedResNet``: RN50, RN101, ...), as the reference's ``PEFT_RN``.

The reference (LIFT-plus ``models/models.py``) splits a CLIP ResNet into a stem (``conv1`` ..
``act3`` and ``avgpool``), the blocks of ``layer1`` .. ``layer4`` and the attention pool, whose
output (``output_dim`` wide, already in the joint embedding space) is the image feature: there is
no image projection, so the text embeddings are the classifier's semantic init as they are.

Of its PEFT methods a ResNet takes:

- ``full`` (its ``unfreeze_params``): every parameter of the blocks (not the stem, not the pool);
- ``bitfit`` (``unfreeze_bias``): every block parameter named ``*bias`` (CLIP's convolutions have
  none, so these are the blocks' BatchNorm biases);
- ``ssf`` (``add_ssf``): one scale and shift of the pooled feature.

Every block is tuned (the reference ignores ``*_layers`` on a ResNet). Its ``unfreeze_bn`` is
reachable from no option of the reference and has none here. BatchNorm always normalises with the
frozen running statistics: the reference's trainer only ever calls ``tuner.train()``, and the
tuner holds no BatchNorm module, so the backbone stays in the eval mode ``clip.load`` returns it in
(see :meth:`liftplus.model.build.LiftModel.train`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import open_clip
import torch
from open_clip.modified_resnet import Bottleneck, ModifiedResNet
from torch import nn

from liftplus.errors import ParamsError
from liftplus.model.peft import SSF

RESNET_PEFT = ("full", "bitfit", "ssf", "none")
"""The PEFT methods the reference applies to a ResNet (``PEFT_RN``); any other has no ResNet form."""


def is_resnet(visual: nn.Module) -> bool:
    return isinstance(visual, ModifiedResNet)


def resnet_vision_cfg(name: str) -> Optional[dict[str, Any]]:
    """The ``vision_cfg`` of ``name`` if open_clip builds it as a ``ModifiedResNet`` (layers given per
    stage, no timm tower), else None; read from the JSON config, nothing built."""
    cfg = open_clip.get_model_config(name) or {}
    vision = cfg.get("vision_cfg") or {}
    if vision.get("timm_model_name") or not isinstance(vision.get("layers"), (list, tuple)):
        return None
    return vision


def stages(visual: ModifiedResNet) -> list[nn.Sequential]:
    return [visual.layer1, visual.layer2, visual.layer3, visual.layer4]


def resnet_blocks(visual: ModifiedResNet) -> list[nn.Module]:
    """The reference's ``PEFT_RN.blocks``: the bottlenecks of ``layer1`` .. ``layer4`` in order."""
    return [block for stage in stages(visual) for block in stage]


def resnet_features(visual: ModifiedResNet, images: torch.Tensor) -> torch.Tensor:
    """The attention-pool output [N, output_dim], as ``ModifiedResNet.forward``, then the SSF if any."""
    x = visual.stem(images.to(visual.conv1.weight.dtype))
    for stage in stages(visual):
        x = stage(x)
    x = visual.attnpool(x)
    tuner = getattr(visual, "tuner", None)
    if tuner is not None and "ssf" in tuner:
        x = tuner["ssf"](x)
    return x


def check_resnet_config(name: str, methods: Sequence[str], peft_layers: Any) -> None:
    """ParamsError for a PEFT setting the reference has no ResNet form of: a method other than
    :data:`RESNET_PEFT`, or block selection (``peft_layers``)."""
    other = next((m for m in methods if m not in RESNET_PEFT), None)
    if other is not None:
        raise ParamsError(
            f"model.peft: {other} does not apply to {name}, a CLIP ResNet "
            f"(the reference tunes one with full, bitfit or ssf): use {', '.join(RESNET_PEFT)}"
        )
    if peft_layers is not None:
        raise ParamsError(
            f"model.peft_layers: {name} is a CLIP ResNet, whose PEFT tunes every block "
            "(the reference ignores *_layers there): leave it null"
        )


def insert_resnet_peft(visual: ModifiedResNet, methods: Sequence[str]) -> None:
    """Make ``methods`` trainable on the frozen ResNet, in the reference's order (full, bitfit, ssf)."""
    blocks = resnet_blocks(visual)
    for method in methods:
        if method == "full":
            for block in blocks:
                block.requires_grad_(True)
        elif method == "bitfit":
            for block in blocks:
                for name, param in block.named_parameters():
                    if name.endswith("bias"):
                        param.requires_grad_(True)
        elif method == "ssf":
            weight = visual.conv1.weight
            visual.tuner = nn.ModuleDict({"ssf": SSF(visual.output_dim, dtype=weight.dtype, device=weight.device)})
        elif method != "none":
            raise ValueError(f"PEFT method '{method}' has no ResNet form (expected one of {', '.join(RESNET_PEFT)})")


def freeze_batchnorm(module: nn.Module) -> None:
    """Every BatchNorm in ``module`` to eval mode: it normalises with its running statistics, never
    updates them."""
    for child in module.modules():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            child.eval()


def tower_shapes(name: str) -> dict[str, tuple[int, ...]]:
    """Shape of every parameter of ``name``'s ResNet image tower, by its name under ``visual``, from a
    model built on the meta device (no memory, no download)."""
    vision = resnet_vision_cfg(name)
    if vision is None:
        raise ValueError(f"{name} is not a CLIP ResNet")
    width = int(vision.get("width", 64))
    with torch.device("meta"):
        visual = ModifiedResNet(
            layers=list(vision["layers"]),
            output_dim=int(open_clip.get_model_config(name).get("embed_dim", 512)),
            heads=width * 32 // int(vision.get("head_width", 64)),
            image_size=int(vision.get("image_size", 224)),
            width=width,
        )
    return {key: tuple(p.shape) for key, p in visual.named_parameters()}


def trained_shapes(name: str, methods: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Shape of every image-tower tensor ``methods`` train on ``name``, by its key in the model's
    state (``backbone.visual.``...): the checkpoint's pre-build reference."""
    shapes = tower_shapes(name)
    blocks = {k: s for k, s in shapes.items() if k.split(".")[0] in ("layer1", "layer2", "layer3", "layer4")}
    trained: dict[str, tuple[int, ...]] = {}
    if "full" in methods:
        trained |= blocks
    if "bitfit" in methods:
        trained |= {k: s for k, s in blocks.items() if k.endswith("bias")}
    if "ssf" in methods:
        embed = shapes["attnpool.c_proj.bias"]
        trained |= {"tuner.ssf.scale": embed, "tuner.ssf.shift": embed}
    return {f"backbone.visual.{k}": s for k, s in trained.items()}


def block_counts(layers: Sequence[int], width: int) -> dict[str, int]:
    """Parameters of the blocks of a CLIP ResNet (``layers`` blocks per stage, stem ``width``) from the
    shapes of open_clip's ``Bottleneck``: 1x1 ``in->p``, 3x3 ``p->p``, 1x1 ``p->4p`` convolutions without
    bias and a BatchNorm (weight + bias) after each, and where the stride is 2 or the width changes a 1x1
    ``in->4p`` downsample convolution with its BatchNorm. ``all``: every parameter (full fine-tuning),
    ``bias``: the BatchNorm biases (BitFit)."""
    expansion = Bottleneck.expansion
    inplanes, total, biases = width, 0, 0
    for stage, count in enumerate(layers):
        planes = width * 2**stage
        for index in range(count):
            out = planes * expansion
            total += inplanes * planes + planes * planes * 9 + planes * out + 2 * (planes + planes + out)
            biases += planes + planes + out
            if index == 0 and (stage > 0 or inplanes != out):
                total += inplanes * out + 2 * out
                biases += out
            inplanes = out
    return {"all": total, "bias": biases}


def resnet_formula(
    methods: Sequence[str],
    layers: Sequence[int],
    width: int,
    embed: int,
    num_classes: int,
    classifier: str = "cosine",
    text_head: int = 0,
) -> int:
    """Trainable parameters by the reference's rules: full ``numel(blocks)``, BitFit ``numel(block biases)``
    (nothing more under full), SSF ``2 * embed``; plus the head, ``K * embed`` (and ``K`` biases for the
    linear head; ``text_head`` for the text head)."""
    counts = block_counts(layers, width)
    if classifier == "text":
        total = text_head
    else:
        total = num_classes * embed + (num_classes if classifier == "linear" else 0)
    if "full" in methods:
        total += counts["all"]
    elif "bitfit" in methods:
        total += counts["bias"]
    if "ssf" in methods:
        total += 2 * embed
    return total
