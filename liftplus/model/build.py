"""The model a method trains: frozen open_clip backbone + PEFT tuners + classifier head."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Optional

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from liftplus.model.backbone import TINY_MODEL, Preprocess, image_features, load_backbone
from liftplus.model.heads import ClassifierName, make_head, set_head_weights
from liftplus.model.peft import PeftBlock, PeftName, insert_peft

METHOD_PEFT = {"fft": "full", "lp": "none", "zs": "none"}
"""train.method -> PEFT, for the methods that do not use ``model.peft`` (lift+, lift)."""


class ModelConfig(BaseModel):
    """Everything needed to rebuild a model; stored in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = TINY_MODEL
    pretrained: Optional[str] = None
    peft: PeftName = "adaptformer"
    bottleneck: Optional[int] = Field(None, gt=0, description="None: the reference's rule from K and L")
    classifier: ClassifierName = "cosine"
    scale: float = Field(25.0, gt=0)
    num_classes: int = Field(gt=0)
    sdpa: bool = True
    seed: int = Field(0, ge=0)

    @classmethod
    def for_method(cls, model_params: Any, method: str, num_classes: int, seed: int = 0) -> "ModelConfig":
        """The config of ``train.method`` given the ``model`` section of params.yaml."""
        if method not in {"lift+", "lift", *METHOD_PEFT}:
            raise ValueError(f"unknown train.method '{method}'")
        return cls(
            name=model_params.name,
            pretrained=model_params.pretrained,
            peft=METHOD_PEFT.get(method, model_params.peft),
            bottleneck=model_params.bottleneck,
            classifier="zero-shot" if method == "zs" else model_params.classifier,
            scale=model_params.scale,
            num_classes=num_classes,
            sdpa=model_params.sdpa,
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class LiftModel(nn.Module):
    """``head(features(images))`` with ``features`` the frozen image encoder plus tuners.

    ``backbone`` is the whole open_clip model (the text tower stays available
    for head init and zero-shot, never trained).
    """

    def __init__(
        self,
        config: ModelConfig,
        backbone: nn.Module,
        head: nn.Module,
        preprocess: Preprocess,
        bottleneck: Optional[int],
    ):
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.head = head
        self.preprocess = preprocess
        self.bottleneck = bottleneck

    @property
    def feature_dim(self) -> int:
        return self.backbone.visual.transformer.width

    @property
    def num_layers(self) -> int:
        return len(self.backbone.visual.transformer.resblocks)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return image_features(self.backbone.visual, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """Trained tensors only: every parameter with ``requires_grad``, and the head's whole state."""
        state = OrderedDict((name, p.detach()) for name, p in self.named_parameters() if p.requires_grad)
        for name, tensor in self.head.state_dict(keep_vars=True).items():
            state[f"head.{name}"] = tensor.detach()
        return state

    def init_head(self, weights: torch.Tensor, source: str = "head weights") -> None:
        set_head_weights(self.head, weights, source)

    def peft_blocks(self) -> list[PeftBlock]:
        return [b for b in self.backbone.visual.transformer.resblocks if isinstance(b, PeftBlock)]


def build_model(config: ModelConfig) -> LiftModel:
    """Backbone (frozen), tuners and head, initialised reproducibly from ``config.seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        backbone, preprocess = load_backbone(config.name, config.pretrained, config.seed)
        bottleneck = insert_peft(
            backbone.visual.transformer.resblocks,
            config.peft,
            config.num_classes,
            bottleneck=config.bottleneck,
            sdpa=config.sdpa,
        )
        visual = backbone.visual
        head = make_head(
            config.classifier,
            visual.transformer.width,
            config.num_classes,
            scale=config.scale,
            projection=visual.proj,
            logit_scale=backbone.logit_scale,
        )
    return LiftModel(config, backbone, head, preprocess, bottleneck)
