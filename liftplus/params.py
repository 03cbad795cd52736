"""Typed schema for ``params.yaml``.

Every stage calls :func:`load_params` before doing any work, so an unknown
key, a wrong type or an out-of-range value stops the pipeline with one line
naming the key, the value and what was expected.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from liftplus.errors import ParamsError

DEFAULT_PARAMS_FILE = Path("params.yaml")


TIMM_PREFIX = "timm/"
"""``model.name`` prefix of a timm ViT (``timm/vit_base_patch16_224``); other names are open_clip's."""

PeftName = Literal["adaptformer", "lora", "adapter", "vpt-shallow", "vpt-deep", "ssf", "bitfit", "full", "none", "aft"]


FLOAT32_MAX = 3.4028234663852886e38


class _Section(BaseModel):
    # allow_inf_nan=False: `.inf` or `.nan` in a float field would train a poisoned model that exits 0
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _within_float32(cls, value: Any) -> Any:
        """Training computes in float32: a larger float is inf there, or makes torch's optimizer raise."""
        if isinstance(value, float) and abs(value) > FLOAT32_MAX:
            raise ValueError(f"{value:g} is beyond the float32 range (magnitude at most {FLOAT32_MAX:.3g})")
        return value


class DataParams(_Section):
    source: Literal["fashion-mnist", "cifar100", "split-list", "imagefolder"] = "fashion-mnist"
    root: str = "/usr/share/datasets/fashion-mnist"
    imbalance_ratio: float = Field(100.0, ge=1.0, description="1 keeps the source balanced")
    seed: int = Field(0, ge=0)
    lists: str = Field("lists", description="folder holding the split lists and class-names file (a DVC dep of shard)")
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
    name: str = Field(
        "liftplus-tiny-vit",
        description="an open_clip model (ViT-B-16), or timm/<name> for a timm ViT (timm/vit_base_patch16_224, "
        "the reference's IN21K ViTs: no text tower)",
    )
    pretrained: Optional[str] = Field(
        None, description="open_clip (or, for timm/ names, timm) pretrained tag, or a local checkpoint path"
    )
    peft: Union[PeftName, list[PeftName]] = Field("adaptformer", description="a method, or a list to combine")
    peft_layers: Optional[Union[StrictInt, list[StrictInt]]] = Field(
        None, description="None: every block; k: the last k blocks; a list: those block indices"
    )
    bottleneck: Optional[int] = Field(None, gt=0, description="None: the LIFT+ rule from K and the tuned L")
    aft_ratio: Optional[float] = Field(None, gt=0, le=1, description="AFT: share of weights trained; None: ~K*d")
    aft_loc: Literal["attn", "mlp", "all"] = "all"
    aft_seed: int = Field(0, ge=0)
    classifier: Literal["cosine", "linear", "l2", "layernorm"] = "cosine"
    scale: float = Field(25.0, gt=0)
    head_init: Optional[Literal["semantic", "class_mean", "linear_probe", "random"]] = Field(
        None,
        validate_default=True,
        description="null: the backbone's default, semantic for CLIP, class_mean for timm/ ViTs (no text tower "
        "for semantic, as the reference's in21k configs)",
    )
    sdpa: bool = Field(True, description="fused F.scaled_dot_product_attention in ViT blocks")
    coop_ctx_len: int = Field(
        4, ge=0, le=75, description="coop: learnable context tokens (the template's X); 0: none, 'a photo of a {}.'"
    )
    coop_init: Optional[Literal["photo"]] = Field(
        None, description="coop: null: context drawn from N(0, 0.02); photo: the embeddings of 'a photo of a' and '.'"
    )
    coop_cls_pos: Literal["end", "middle", "front"] = Field("end", description="coop: where the class name sits")
    clip_adapter: bool = Field(False, description="coop: CLIP-Adapter on the projected image and text features")
    clip_adapter_dim: int = Field(4, gt=0, description="coop: CLIP-Adapter bottleneck")
    proj_tuning: bool = Field(False, description="coop: train the image and text projections")

    PEFT_ORDER: ClassVar[tuple[str, ...]] = (
        "full",
        "bitfit",
        "vpt-shallow",
        "vpt-deep",
        "lora",
        "adapter",
        "adaptformer",
        "ssf",
        "aft",
        "none",
    )
    """The order the reference's ``build_tuner`` adds tuners in; a list of methods is applied in it."""

    @field_validator("peft")
    @classmethod
    def _peft_list(cls, value: Any) -> Any:
        methods = cls.normalize_peft(value)
        return methods[0] if len(methods) == 1 else list(methods)

    @field_validator("peft_layers")
    @classmethod
    def _layers(cls, value: Any) -> Any:
        return cls.check_layers(value)

    @field_validator("head_init")
    @classmethod
    def _head_init(cls, value: Optional[str], info: ValidationInfo) -> str:
        """None resolves to the backbone's default; semantic needs a text tower, which timm ViTs lack."""
        timm_backbone = str(info.data.get("name", "")).startswith(TIMM_PREFIX)
        if value is None:
            return "class_mean" if timm_backbone else "semantic"
        if value == "semantic" and timm_backbone:
            raise ValueError(
                f"semantic needs a CLIP text tower and {info.data['name']} has none: set class_mean "
                "(the reference's init for it), linear_probe, random or null"
            )
        return value

    @staticmethod
    def check_layers(value: Any) -> Any:
        """``peft_layers`` as far as it can be checked without the model: k >= 0, indices each named once."""
        if isinstance(value, int) and value < 0:
            raise ValueError("an int counts the last blocks tuned: expected 0 or more")
        if isinstance(value, (list, tuple)) and len(set(value)) != len(value):
            raise ValueError(f"{list(value)} names a block twice")
        return value

    @staticmethod
    def normalize_peft(value: Any) -> tuple[str, ...]:
        """One method or a list of them, as a tuple in :attr:`PEFT_ORDER`; ValueError for an empty list,
        a repeat, ``none`` with others, or both VPT variants."""
        methods = [value] if isinstance(value, str) else list(value)
        if not methods:
            raise ValueError("an empty list: use none for no PEFT")
        if len(set(methods)) != len(methods):
            raise ValueError(f"{methods} names a method twice")
        if len(methods) > 1 and "none" in methods:
            raise ValueError("none cannot be combined with other methods")
        if {"vpt-shallow", "vpt-deep"} <= set(methods):
            raise ValueError("vpt-shallow and vpt-deep cannot be combined")
        order = ModelParams.PEFT_ORDER
        unknown = [m for m in methods if m not in order]
        if unknown:
            raise ValueError(f"unknown PEFT method '{unknown[0]}', expected one of {', '.join(order)}")
        return tuple(sorted(methods, key=order.index))


class InitHeadParams(_Section):
    template: str = "a photo of a {}."
    batch_size: int = Field(256, gt=0)

    @model_validator(mode="after")
    def _template_has_slot(self) -> InitHeadParams:
        if "{}" not in self.template:
            raise ValueError("template must contain '{}' for the class name")
        return self


class TrainParams(_Section):
    method: Literal["lift+", "lift", "fft", "lp", "zs", "coop"] = "lift+"
    epochs: Optional[int] = Field(None, gt=0, description="None: the method's default")
    lr: Optional[float] = Field(None, gt=0, description="None: the method's default")
    batch_size: int = Field(128, gt=0)
    micro_batch: int = Field(128, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    loss: Literal["la", "ce", "focal", "ldam", "bs", "cb", "grw", "lade"] = "la"
    tau: float = Field(1.0, ge=0)
    mda: Optional[bool] = Field(None, description="None: the method's default")
    mda_schedule: Literal["convex", "min", "max", "linear", "concave"] = "convex"
    workers: int = Field(2, ge=0)
    seed: int = Field(0, ge=0)
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="CUDA only: auto = fp16 (the reference's amp: fp16 autocast + GradScaler); bf16 autocast"
    )
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
    validation: Literal["auto", "val", "holdout", "none"] = Field(
        "auto",
        description="score each epoch on: auto: the shards' val split if they have one, else nothing; "
        "val: that split (required); holdout: val_fraction of each class's training images, "
        "then left out of training (this changes the training set); none: nothing",
    )
    val_fraction: float = Field(0.1, gt=0, lt=1, description="validation holdout: share of each class held out")
    keep: Literal["last", "best"] = Field(
        "last", description="the weights to write: the last epoch's (the reference's) or the best validated epoch's"
    )

    @model_validator(mode="after")
    def _micro_batch_divides(self) -> TrainParams:
        if self.batch_size % self.micro_batch:
            raise ValueError(f"micro_batch {self.micro_batch} must divide batch_size {self.batch_size}")
        return self

    @model_validator(mode="after")
    def _best_needs_validation(self) -> TrainParams:
        if self.keep == "best" and self.validation == "none":
            raise ValueError("keep 'best' needs validation to pick the best epoch by, but validation is 'none'")
        return self


class EvaluateParams(_Section):
    tte: bool = True
    tte_expand: Optional[int] = Field(
        None,
        ge=0,
        description="pixels added to the short side before the test crop(s), with TTE or not; null: the "
        "reference's for the resolution (liftplus.data.transforms.eval_resize)",
    )
    batch_size: int = Field(256, gt=0)
    workers: int = Field(2, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="CUDA only: auto = fp16 = fp16 weights, LayerNorms fp32 (the reference's test); bf16 autocast",
    )
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

    @model_validator(mode="after")
    def _text_classifier_keys(self) -> Params:
        """The text-classifier keys go with train.method coop, and together as the reference allows."""
        model, method = self.model, self.train.method
        if method != "coop":
            on = next((key for key in TEXT_HEAD_KEYS if getattr(model, key)), None)
            if on is not None:
                raise ValueError(
                    f"model.{on} acts on the text classifier of train.method coop; {method} classifies with "
                    "model.classifier"
                )
        elif model.coop_init == "photo" and model.coop_ctx_len == 0:
            raise ValueError(
                "model.coop_init photo makes 'a photo of a' and '.' the context, model.coop_ctx_len 0 asks for none"
            )
        elif model.coop_ctx_len == 0 and not (model.clip_adapter or model.proj_tuning):
            raise ValueError(
                "train.method coop with model.coop_ctx_len 0 trains nothing: set model.clip_adapter or "
                "model.proj_tuning (or use zs)"
            )
        return self


MAX_QUOTED = 60
"""Characters of a bad value or key an error message quotes; the rest is elided."""


def _bounded_repr() -> reprlib.Repr:
    """A repr that shows at most 3 items a level, 2 levels deep (Python 3.11's Repr takes no arguments)."""
    bounded = reprlib.Repr()
    bounded.maxlevel = 2
    bounded.maxdict = bounded.maxlist = bounded.maxtuple = bounded.maxset = bounded.maxfrozenset = 3
    bounded.maxstring = bounded.maxlong = bounded.maxother = MAX_QUOTED
    return bounded


_bounded = _bounded_repr()


def _shorten(text: str) -> str:
    return text if len(text) <= MAX_QUOTED else text[: MAX_QUOTED - 3] + "..."


def _quote(value: Any) -> str:
    """``repr(value)``, bounded: a value built from nested YAML aliases can stand for billions of items,
    and the error message must not walk them all."""
    return _shorten(_bounded.repr(value))


def _describe(error: dict[str, Any]) -> str:
    key = _shorten(".".join(str(part) for part in error["loc"] if part != "__root__"))
    value = _quote(error.get("input"))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        return f"unknown key '{key}'"
    if error["type"] == "literal_error":
        expected = message.removeprefix("Input should be ")
        return f"'{key}' is {value}, expected one of {expected}"
    if error["type"] == "value_error":
        return f"'{key or 'params'}': {message.removeprefix('Value error, ')}"
    return f"'{key}' is {value}: {message[0].lower() + message[1:]}"


def section_names() -> list[str]:
    """The top-level keys of params.yaml, in schema order."""
    return [field.alias or name for name, field in Params.model_fields.items()]


def parse_params(raw: dict[str, Any] | None, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise ParamsError naming the first bad key.

    An empty file (None, or an empty mapping) is an error, not the built-in
    defaults: the stages would run on values nobody wrote, and DVC would not
    find the params its stages depend on.
    """
    if raw is None or raw == {}:
        raise ParamsError(f"{source}: empty; expected the sections {', '.join(section_names())}")
    if not isinstance(raw, dict):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(e) for e in exc.errors()]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ParamsError(f"{source}: {problems[0]}{more}") from None


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _refuse_duplicate_keys(root: yaml.Node, source: str) -> None:
    """ParamsError naming a key written twice in one mapping (PyYAML would keep the last silently).

    Walks the composed node graph once per node: an alias is the same node object,
    so nested aliases (a "billion laughs" file) cost no more than their text.
    """
    pending: list[tuple[yaml.Node, str]] = [(root, "")]
    visited: set[int] = set()
    while pending:
        node, path = pending.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            pending.extend((item, f"{path}[{index}]") for index, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first_line: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                key_path = f"{path}.{key}" if path else key
                pending.append((value_node, key_path))
                if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                    continue
                identity, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if identity in first_line:
                    raise ParamsError(
                        f"{source}: duplicate key '{_shorten(key_path)}' (line {first_line[identity]} and line {line})"
                    )
                first_line[identity] = line


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; ParamsError for bytes that are not UTF-8, bad YAML or a repeated key."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at position {exc.start})") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _refuse_duplicate_keys(root, str(path))
        return loader.construct_document(root)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}") from None
    finally:
        loader.dispose()


def load_params(path: str | Path = DEFAULT_PARAMS_FILE) -> Params:
    """Read and validate a params file."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    return parse_params(_read_yaml(path), str(path))


METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "lift+": {"epochs": 5, "lr": 0.02, "mda": True},
    "lift": {"epochs": 10, "lr": 0.01, "mda": False},
    "fft": {"epochs": 5, "lr": 0.02, "mda": True},
    "lp": {"epochs": 5, "lr": 0.02, "mda": True},
    "zs": {"epochs": 0, "lr": 0.0, "mda": False},
    "coop": {"epochs": 50, "lr": 0.002, "mda": False},
}
"""Per-method recipe, as in the reference's configs/method/*.yaml. Its coop.yaml also sets
batch_size 32: ``train.batch_size`` (and ``micro_batch``) have no per-method default, so a coop
run must set them in params.yaml (``train.batch_size: 32``, ``train.micro_batch: 32``)."""

TEXT_HEAD_KEYS = ("clip_adapter", "proj_tuning")
"""``model`` keys that act on the text classifier only (the reference uses them with ``classifier: None``)."""


def resolved_train(train: TrainParams) -> TrainParams:
    """Fill the method's defaults for the knobs left as ``None``."""
    defaults = METHOD_DEFAULTS[train.method]
    updates = {k: v for k, v in defaults.items() if getattr(train, k) is None}
    return train.model_copy(update=updates)
