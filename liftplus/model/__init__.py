"""open_clip backbone, PEFT modules and classifier heads for LIFT+."""

from liftplus.model.backbone import (
    TINY_MODEL,
    TINY_RN_MODEL,
    Preprocess,
    backbone_fingerprint,
    image_features,
    load_backbone,
)
from liftplus.model.build import LiftModel, ModelConfig, build_model
from liftplus.model.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    model_from_checkpoint,
    save_checkpoint,
)
from liftplus.model.heads import (
    CosineClassifier,
    L2NormClassifier,
    LinearClassifier,
    ZeroShotHead,
    class_mean_weights,
    linear_probe_weights,
    random_weights,
)
from liftplus.model.peft import PEFT_METHODS, PeftBlock, default_bottleneck, insert_peft
from liftplus.model.summary import parameter_summary
from liftplus.model.text import class_prompts, encode_text_init

__all__ = [
    "TINY_MODEL",
    "TINY_RN_MODEL",
    "Preprocess",
    "backbone_fingerprint",
    "image_features",
    "load_backbone",
    "LiftModel",
    "ModelConfig",
    "build_model",
    "load_checkpoint",
    "load_trainable_state",
    "model_from_checkpoint",
    "save_checkpoint",
    "CosineClassifier",
    "L2NormClassifier",
    "LinearClassifier",
    "ZeroShotHead",
    "class_mean_weights",
    "linear_probe_weights",
    "random_weights",
    "PEFT_METHODS",
    "PeftBlock",
    "default_bottleneck",
    "insert_peft",
    "parameter_summary",
    "class_prompts",
    "encode_text_init",
]
