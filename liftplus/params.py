"""Typed schema for ``params.yaml``.

Every stage calls :func:`load_params` before doing any work, so an unknown
key, a wrong type or an out-of-range value stops the pipeline with one line
naming the key, the value and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liftplus.errors import ParamsError

DEFAULT_PARAMS_FILE = Path("params.yaml")


PeftName = Literal[
    "adaptformer", "lora", "adapter", "vpt-shallow", "vpt-deep", "ssf", "bitfit", "full", "none"
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataParams(_Section):
    source: Literal["fashion-mnist", "cifar100", "split-list", "imagefolder"] = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    imbalance_ratio: float = Field(100.0, ge=1.0, description="1 keeps the source balanced")
    seed: int = Field(0, ge=0)
    lists: str = Field(
        "lists", description="folder holding the split lists and class-names file (a DVC dep of shard)"
    )
    classnames: Optional[str] = Field(None, description="class-names file (split-list)")
    train_list: Optional[str] = None
    val_list: Optional[str] = None
    test_list: Optional[str] = None
    max_short_side: int = Field(256, ge=0, description="0 keeps original sizes")
    store: Literal["encoded", "pixels"] = Field(
        "encoded", description="pixels: decoded uint8 .npy, no decode per epoch, ~10x the bytes of JPEG"
    )
    shard_max_samples: int = Field(10000, gt=0)
    shard_max_bytes: int = Field(256 * 1024 * 1024, gt=0)
    on_decode_error: Literal["fail", "skip"] = "fail"
    holdout_fraction: float = Field(
        0.2, gt=0, lt=1, description="share of each class held out as test when a source has no test split"
    )
    max_pixels: int = Field(50_000_000, gt=0, description="images with more pixels are refused (decompression bombs)")
    allow_outside_root: bool = Field(False, description="let split-list paths and links leave data.root")


class ValidateParams(_Section):
    sample_size: int = Field(256, gt=0, description="records decoded per split")
    verify_checksums: bool = True


class ModelParams(_Section):
    name: str = "liftplus-tiny-vit"
    pretrained: Optional[str] = Field(None, description="open_clip tag or local checkpoint path")
    peft: PeftName = "adaptformer"
    bottleneck: Optional[int] = Field(None, gt=0, description="None: the LIFT+ rule from K and L")
    classifier: Literal["cosine", "linear", "l2"] = "cosine"
    scale: float = Field(25.0, gt=0)
    head_init: Literal["semantic", "class_mean", "linear_probe", "random"] = "semantic"
    sdpa: bool = Field(True, description="fused F.scaled_dot_product_attention in ViT blocks")


class InitHeadParams(_Section):
    template: str = "a photo of a {}."
    batch_size: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _template_has_slot(self) -> "InitHeadParams":
        if "{}" not in self.template:
            raise ValueError("template must contain '{}' for the class name")
        return self


class TrainParams(_Section):
    method: Literal["lift+", "lift", "fft", "lp", "zs"] = "lift+"
    epochs: Optional[int] = Field(None, gt=0, description="None: the method's default")
    lr: Optional[float] = Field(None, gt=0, description="None: the method's default")
    batch_size: int = Field(128, gt=0)
    micro_batch: int = Field(128, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    loss: Literal["la", "ce", "focal", "ldam", "bs"] = "la"
    tau: float = Field(1.0, ge=0)
    mda: Optional[bool] = Field(None, description="None: the method's default")
    mda_schedule: Literal["convex", "min", "max", "linear", "concave"] = "convex"
    workers: int = Field(2, ge=0)
    seed: int = Field(0, ge=0)
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: bool = False
    verify_checksums: bool = False
    input: Literal["auto", "float", "uint8", "encoded"] = Field(
        "auto", description="what loader workers hand over; auto: uint8 on CUDA, float elsewhere"
    )
    resize: Literal["pil", "torch"] = Field(
        "pil", description="resizer of the train crops: PIL (the reference's) or torch's uint8 kernel (2x cheaper)"
    )
    prefetch: int = Field(4, gt=0, description="batches in flight per worker")
    persistent_workers: bool = True

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> "TrainParams":
        if self.batch_size % self.micro_batch:
            raise ValueError(
                f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size}"
            )
        return self


class EvaluateParams(_Section):
    tte: bool = True
    tte_expand: int = Field(24, ge=0)
    batch_size: int = Field(256, gt=0)
    workers: int = Field(2, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    input: Literal["auto", "float", "uint8", "encoded"] = Field(
        "auto", description="what loader workers hand over; auto: uint8 on CUDA, float elsewhere"
    )
    prefetch: int = Field(4, gt=0, description="batches in flight per worker")
    persistent_workers: bool = True


class RegisterParams(_Section):
    name: str = "liftplus-classifier"
    min_accuracy: float = Field(0.0, ge=0, le=100)
    min_mean_class_accuracy: float = Field(0.0, ge=0, le=100)
    min_few_accuracy: Optional[float] = Field(None, ge=0, le=100)
    stage: Optional[Literal["dev", "staging", "prod"]] = "staging"


class Params(_Section):
    data: DataParams = DataParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    model: ModelParams = ModelParams()
    init_head: InitHeadParams = InitHeadParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    register_: RegisterParams = Field(RegisterParams(), alias="register")

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"] if part != "__root__")
    value = error.get("input")
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "literal_error":
        expected = message.removeprefix("Input should be ")
        return f"'{key}' is {value!r}, expected one of {expected}"
    if error["type"] == "value_error":
        return f"'{key or 'params'}': {message.removeprefix('Value error, ')}"
    return f"'{key}' is {value!r}: {message[0].lower() + message[1:]}"


def parse_params(raw: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise ParamsError naming the first bad key."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ParamsError(f"{source}: {problems[0]}{more}") from None


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    return parse_params(raw, str(path))


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lift+": {"epochs": 5, "lr": 0.02, "mda": True},
    "lift": {"epochs": 10, "lr": 0.01, "mda": False},
    "fft": {"epochs": 5, "lr": 0.02, "mda": True},
    "lp": {"epochs": 5, "lr": 0.02, "mda": True},
    "zs": {"epochs": 0, "lr": 0.0, "mda": False},
}
"""Per-method recipe, as in the reference's configs/method/*.yaml."""


def resolved_train(train: TrainParams) -> TrainParams:
    """Fill the method's defaults for the knobs left as ``None``."""
    defaults = METHOD_DEFAULTS[train.method]
    updates = {k: v for k, v in defaults.items() if getattr(train, k) is None}
    return train.model_copy(update=updates)
