"""The model a method trains: frozen open_clip backbone + PEFT tuners + classifier head."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal, Optional, Union

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator
from torch import nn

from liftplus.errors import ParamsError
from liftplus.model.backbone import TINY_MODEL, Preprocess, image_features, image_projection, load_backbone
from liftplus.model.heads import ClassifierName, make_head, set_head_weights
from liftplus.model.peft import PeftBlock, PeftName, insert_peft, peft_methods
from liftplus.model.resnet import (
    check_resnet_config,
    freeze_batchnorm,
    insert_resnet_peft,
    is_resnet,
    resnet_blocks,
    resnet_vision_cfg,
)
from liftplus.model.text_head import text_options
from liftplus.model.timm_vit import is_timm_name
from liftplus.params import ModelParams

METHOD_PEFT = {"fft": "full", "lp": "none", "zs": "none", "coop": "none"}
"""train.method -> PEFT, for the methods that do not use ``model.peft`` (lift+, lift)."""
METHOD_CLASSIFIER = {"zs": "zero-shot", "coop": "text"}
"""train.method -> head, for the methods that do not use ``model.classifier``."""
TEXT_FIELDS = ("coop_ctx_len", "coop_init", "coop_cls_pos", "clip_adapter", "clip_adapter_dim", "proj_tuning")
"""Config fields of the text classifier (:mod:`liftplus.model.text_head`); at their defaults elsewhere."""


class ModelConfig(BaseModel):
    """Everything needed to rebuild a model; stored in every checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())

    name: str = TINY_MODEL
    pretrained: Optional[str] = None
    peft: Union[PeftName, tuple[PeftName, ...]] = "adaptformer"
    bottleneck: Optional[int] = Field(None, gt=0, description="None: the reference's rule from K and L")
    classifier: ClassifierName = "cosine"
    scale: float = Field(25.0, gt=0)
    num_classes: int = Field(gt=0)
    sdpa: bool = True
    seed: int = Field(0, ge=0)
    peft_layers: Optional[Union[StrictInt, tuple[StrictInt, ...]]] = None
    aft_ratio: Optional[float] = Field(None, gt=0, le=1)
    aft_loc: Literal["attn", "mlp", "all"] = "all"
    aft_seed: int = Field(0, ge=0)
    coop_ctx_len: int = Field(4, ge=0, le=75)
    coop_init: Optional[Literal["photo"]] = None
    coop_cls_pos: Literal["end", "middle", "front"] = "end"
    clip_adapter: bool = False
    clip_adapter_dim: int = Field(4, gt=0)
    proj_tuning: bool = False

    @model_validator(mode="after")
    def _text_fields(self) -> ModelConfig:
        """The CoOp, CLIP-Adapter and projection-tuning fields shape the text classifier only."""
        if self.classifier != "text":
            changed = next((n for n in TEXT_FIELDS if getattr(self, n) != type(self).model_fields[n].default), None)
            if changed is not None:
                raise ValueError(f"{changed} applies to the text classifier only (classifier 'text')")
        return self

    @field_validator("peft", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> Any:
        """A name, or a list of two or more as a tuple in the order they are applied."""
        methods = ModelParams.normalize_peft(value)
        return methods[0] if len(methods) == 1 else methods

    @field_validator("peft_layers")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        """As ``model.peft_layers`` (the range is checked at build, against the model's depth)."""
        return ModelParams.check_layers(value)

    @property
    def methods(self) -> tuple[str, ...]:
        return peft_methods(self.peft)

    @classmethod
    def for_method(cls, model_params: Any, method: str, num_classes: int, seed: int = 0) -> ModelConfig:
        """The config of ``train.method`` given the ``model`` section of params.yaml."""
        if method not in {"lift+", "lift", *METHOD_PEFT}:
            raise ValueError(f"unknown train.method '{method}'")
        peft = METHOD_PEFT.get(method, model_params.peft)
        aft = "aft" in peft_methods(peft)
        text = method == "coop"
        photo = text and model_params.coop_init == "photo"  # the template fixes length and position
        context = text and not photo and model_params.coop_ctx_len > 0
        clip_adapter = text and model_params.clip_adapter
        return cls(
            name=model_params.name,
            pretrained=model_params.pretrained,
            peft=peft,
            bottleneck=model_params.bottleneck,
            classifier=METHOD_CLASSIFIER.get(method, model_params.classifier),
            scale=model_params.scale,
            num_classes=num_classes,
            sdpa=model_params.sdpa,
            seed=seed,
            peft_layers=None if peft == "none" else model_params.peft_layers,
            aft_ratio=model_params.aft_ratio if aft else None,
            aft_loc=model_params.aft_loc if aft else "all",
            aft_seed=model_params.aft_seed if aft else 0,
            coop_ctx_len=model_params.coop_ctx_len if text and not photo else 4,
            coop_init=model_params.coop_init if text else None,
            coop_cls_pos=model_params.coop_cls_pos if context else "end",
            clip_adapter=clip_adapter,
            clip_adapter_dim=model_params.clip_adapter_dim if clip_adapter else 4,
            proj_tuning=text and model_params.proj_tuning,
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as JSON types; a field added after the first release is left out while at its
        default, so a default model's checkpoint stays what it was."""
        later = {"peft_layers", "aft_ratio", "aft_loc", "aft_seed", *TEXT_FIELDS}
        at_default = {name for name in later if getattr(self, name) == type(self).model_fields[name].default}
        return self.model_dump(mode="json", exclude=at_default)


class LiftModel(nn.Module):
    """``head(features(images))`` with ``features`` the frozen image encoder plus tuners.

    ``backbone`` is the whole open_clip model (the text tower stays available
    for head init and zero-shot, never trained). Its BatchNorm layers (a CLIP
    ResNet's) stay in eval mode whatever mode the model is put in, so their
    running statistics are never updated (see :mod:`liftplus.model.resnet`).
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
        freeze_batchnorm(self.backbone)

    def train(self, mode: bool = True) -> LiftModel:
        super().train(mode)
        freeze_batchnorm(self.backbone)
        return self

    @property
    def is_resnet(self) -> bool:
        return is_resnet(self.backbone.visual)

    @property
    def feature_dim(self) -> int:
        if self.is_resnet:
            return self.backbone.visual.output_dim
        return self.backbone.visual.transformer.width

    @property
    def num_layers(self) -> int:
        if self.is_resnet:
            return len(resnet_blocks(self.backbone.visual))
        return len(self.backbone.visual.transformer.resblocks)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return image_features(self.backbone.visual, images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def trainable_state_dict(self) -> OrderedDict[str, torch.Tensor]:
        """Trained tensors only: every parameter with ``requires_grad``, and the head's whole state."""
        state = OrderedDict((name, p.detach()) for name, p in self.named_parameters() if p.requires_grad)
        for name, tensor in self.head.state_dict(keep_vars=True).items():
            state[f"head.{name}"] = tensor.detach()
        return state

    def init_head(self, weights: torch.Tensor, source: str = "head weights") -> None:
        set_head_weights(self.head, weights, source)

    def peft_blocks(self) -> list[PeftBlock]:
        """The ViT's wrapped blocks; none for a CLIP ResNet (its tuners are its own tensors and ``tuner``)."""
        if self.is_resnet:
            return []
        return [b for b in self.backbone.visual.transformer.resblocks if isinstance(b, PeftBlock)]

    def peft_modules(self) -> list[nn.Module]:
        """The modules of the image encoder PEFT may train tensors of: the ViT's blocks, or the ResNet's
        blocks and its ``tuner`` (SSF)."""
        visual = self.backbone.visual
        if not self.is_resnet:
            return [visual.transformer.resblocks]
        return [*resnet_blocks(visual), *([visual.tuner] if hasattr(visual, "tuner") else [])]


TEXT_CLASSIFIERS = ("zero-shot", "text")
"""Heads built from the text tower (train.method zs, coop): a backbone without one cannot have them."""


def build_model(config: ModelConfig) -> LiftModel:
    """Backbone (frozen), tuners and head, initialised reproducibly from ``config.seed``."""
    if config.classifier in TEXT_CLASSIFIERS and is_timm_name(config.name):
        raise ParamsError(
            f"train.method: the {config.classifier} classifier needs a CLIP text tower and model.name "
            f"{config.name} has none (a timm ViT): use lift+, lift, fft or lp"
        )
    if resnet_vision_cfg(config.name) is not None:
        check_resnet_config(config.name, config.methods, config.peft_layers)
        _check_resnet_text_options(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        backbone, preprocess = load_backbone(config.name, config.pretrained, config.seed)
        visual = backbone.visual
        if is_resnet(visual):
            insert_resnet_peft(visual, config.methods)
            bottleneck, feature_dim = None, visual.output_dim
        else:
            bottleneck = insert_peft(
                visual.transformer.resblocks,
                config.peft,
                config.num_classes,
                bottleneck=config.bottleneck,
                sdpa=config.sdpa,
                layers=config.peft_layers,
                aft_ratio=config.aft_ratio,
                aft_loc=config.aft_loc,
                aft_seed=config.aft_seed,
            )
            feature_dim = visual.transformer.width
        head = make_head(
            config.classifier,
            feature_dim,
            config.num_classes,
            scale=config.scale,
            projection=image_projection(visual),
            logit_scale=backbone.logit_scale,
            backbone=backbone,
            text=text_options(config) if config.classifier == "text" else None,
        )
    return LiftModel(config, backbone, head, preprocess, bottleneck)


def _check_resnet_text_options(config: ModelConfig) -> None:
    """CLIP-Adapter and projection tuning act on the image projection, which a CLIP ResNet lacks (the
    reference's ``add_clip_adapter`` and ``unfreeze_image_proj`` fail on one)."""
    option = "clip_adapter" if config.clip_adapter else "proj_tuning" if config.proj_tuning else None
    if option is not None:
        raise ParamsError(
            f"model.{option}: {config.name} is a CLIP ResNet, with no image projection to adapt or tune "
            "(its attention pool projects): leave it off"
        )
