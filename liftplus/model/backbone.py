"""The frozen open_clip backbone: loading, fingerprinting, and the image feature.

The image feature fed to the classifier is, for a ViT, the class-token output
after ``ln_post`` and *before* the projection (768-d for ViT-B-16); for a CLIP
ResNet (RN50, ...), the attention-pool output, which is already projected
(1024-d for RN50), as in the reference. :func:`image_features` wires open_clip's
own submodules together so that PEFT-wrapped blocks (see
:mod:`liftplus.model.peft`, :mod:`liftplus.model.resnet`) take part.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import open_clip
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from liftplus.errors import CheckpointError, ParamsError
from liftplus.io import is_checkpoint_file, sha256_file
from liftplus.model import timm_vit
from liftplus.model.resnet import is_resnet, resnet_features

CONFIG_DIR = Path(__file__).parent / "configs"
TINY_MODEL = "liftplus-tiny-vit"
TINY_RN_MODEL = "liftplus-tiny-rn"
"""A CLIP ResNet of the same tiny size (layers 1-1-1-1, width 8): the ResNet path in tests."""

open_clip.add_model_config(CONFIG_DIR)


@dataclass(frozen=True)
class Preprocess:
    """What the image transforms need to know about the backbone."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= 200 else line[:197] + "..."


def _model_config(name: str) -> dict:
    config = open_clip.get_model_config(name)
    if config is None:
        raise ParamsError(
            f"model.name: '{name}' is not an open_clip model config "
            f"(e.g. ViT-B-16, ViT-B-16-quickgelu, RN50, {TINY_MODEL}; see open_clip.list_models())"
        )
    return config


def _classify_pretrained(name: str, pretrained: str) -> str:
    """'tag' for an open_clip pretrained tag of ``name``, 'file' for a local checkpoint."""
    if open_clip.get_pretrained_cfg(name, pretrained):
        return "tag"
    if is_checkpoint_file(pretrained):
        return "file"
    tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
    raise CheckpointError(
        f"model.pretrained: '{pretrained}' is neither a local checkpoint file nor an open_clip tag "
        f"of {name} (its tags: {tags})"
    )


def _load_error(name: str, where: str, exc: BaseException) -> CheckpointError:
    """One line for what went wrong inside open_clip/torch while loading ``where``."""
    text = str(exc).strip()
    if isinstance(exc, pickle.UnpicklingError) or text.startswith("Weights only load failed"):
        return CheckpointError(
            f"{where}: not a loadable state dict (corrupt, or holds pickled objects other than tensors)"
        )
    if text.startswith("Error(s) in loading state_dict"):
        details = [line.strip() for line in text.splitlines()[1:] if line.strip()]
        detail = details[0] if details else "keys or shapes differ"
        return CheckpointError(f"{where}: does not match {name}: {_one_line(detail)}")
    if "zip archive" in text or isinstance(exc, (EOFError, zipfile.BadZipFile)):
        return CheckpointError(f"{where}: corrupt checkpoint file (truncated or not a torch archive)")
    return CheckpointError(f"{where}: cannot load backbone {name}: {_one_line(exc)}")


def backbone_fingerprint(name: str, pretrained: Optional[str], seed: int = 0) -> str:
    """Identify the exact backbone weights an adapter was trained on.

    A local checkpoint is identified by its content (size + sha256), not its
    path, so a moved or copied file still matches; a random init by its seed.
    """
    timm_backbone = timm_vit.is_timm_name(name)
    config = timm_vit.config_identity(name) if timm_backbone else _model_config(name)
    digest = hashlib.sha256()
    digest.update(json.dumps(config, sort_keys=True).encode())
    digest.update(f"\0name={name}".encode())
    if pretrained is None:
        digest.update(f"\0random-init seed={seed}".encode())
    elif timm_backbone and timm_vit.classify_pretrained(name, pretrained) == "tag":
        digest.update(f"\0{timm_vit.tag_identity(name, pretrained)}".encode())
    elif not timm_backbone and _classify_pretrained(name, pretrained) == "tag":
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        digest.update(f"\0tag={pretrained} hf_hub={tag_cfg.get('hf_hub', '')} url={tag_cfg.get('url', '')}".encode())
    else:
        stat = Path(pretrained).stat()
        content = _file_sha256(str(Path(pretrained).resolve()), stat.st_size, stat.st_mtime_ns)
        digest.update(f"\0file size={stat.st_size} sha256={content}".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=16)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """Content hash of a checkpoint, computed once per process while the file is unchanged."""
    return sha256_file(path)


def load_backbone(name: str, pretrained: Optional[str] = None, seed: int = 0) -> tuple[nn.Module, Preprocess]:
    """Build the open_clip model ``name``, every parameter frozen.

    ``pretrained`` is an open_clip tag (downloads), a local checkpoint path, or
    None for a random init that is the same in every process for a given seed.
    A ``timm/`` name loads a timm ViT as :class:`~liftplus.model.timm_vit.TimmBackbone`
    (``visual`` only, no text tower; see :mod:`liftplus.model.timm_vit`).
    """
    if timm_vit.is_timm_name(name):
        backbone, cfg = timm_vit.load_timm(name, pretrained, seed, _load_error)
        return backbone, _preprocess_of(backbone.visual, cfg)
    _model_config(name)
    force_quick_gelu = False
    if pretrained is not None and _classify_pretrained(name, pretrained) == "tag":
        force_quick_gelu = bool(open_clip.get_pretrained_cfg(name, pretrained).get("quick_gelu", False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            with _quiet_random_init_warning():
                model = open_clip.create_model(
                    name, pretrained=pretrained, force_quick_gelu=force_quick_gelu, weights_only=True
                )
        except Exception as exc:  # open_clip/torch raise RuntimeError, UnpicklingError, zip errors, ...
            if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                raise
            raise _load_error(name, pretrained if pretrained is not None else name, exc) from None
    model.requires_grad_(False)
    visual = model.visual
    if not (is_resnet(visual) or _is_plain_vit(visual)):
        raise ParamsError(f"model.name: '{name}' is not a plain ViT or CLIP ResNet image encoder (LIFT+ needs one)")
    return model, _preprocess_of(visual)


def _is_plain_vit(visual: nn.Module) -> bool:
    return isinstance(visual, VisionTransformer) and visual.attn_pool is None and visual.pool_type in ("tok", "avg")


@contextlib.contextmanager
def _quiet_random_init_warning() -> Iterator[None]:
    """Drop open_clip's root-logger warning that a model was initialised randomly: here that is intended."""

    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def has_text_tower(backbone: nn.Module) -> bool:
    """Whether ``backbone`` can encode class names (open_clip CLIP models can, timm ViTs cannot)."""
    return callable(getattr(backbone, "encode_text", None))


def _preprocess_of(visual: nn.Module, cfg: Optional[dict] = None) -> Preprocess:
    cfg = cfg if cfg is not None else getattr(visual, "preprocess_cfg", {})
    size = cfg.get("size", visual.image_size)
    if isinstance(size, (tuple, list)):
        size = size[0]
    return Preprocess(
        image_size=int(size),
        mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        interpolation=str(cfg.get("interpolation", "bicubic")),
    )


def vision_blocks(visual: VisionTransformer) -> nn.ModuleList:
    return visual.transformer.resblocks


def image_projection(visual: nn.Module) -> Optional[torch.Tensor]:
    """The projection from the image feature into the joint embedding space; None for a CLIP ResNet,
    whose feature (the attention pool's output) is in that space already, and for a timm ViT."""
    return None if is_resnet(visual) else getattr(visual, "proj", None)


def image_features(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The image feature: [N, width] for a ViT, [N, output_dim] for a CLIP ResNet.

    ViT: the class-token feature after ``ln_post``, before ``proj``, same
    wiring as open_clip's ``VisionTransformer.forward`` up to the projection.
    Tokens added by visual prompts (VPT) sit between the class token and the
    patches; they are dropped before pooling. ResNet: see
    :func:`~liftplus.model.resnet.resnet_features`.
    """
    if is_resnet(visual):
        return resnet_features(visual, images)
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    class_token = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], -1, -1).to(x.dtype)
    x = torch.cat([class_token, x], dim=1)
    x = x + visual.positional_embedding.to(x.dtype)
    x = visual.patch_dropout(x)
    x = visual.ln_pre(x)
    num_tokens = x.shape[1]
    x = visual.transformer(x)
    if x.shape[1] > num_tokens:
        x = torch.cat([x[:, :1], x[:, x.shape[1] - (num_tokens - 1) :]], dim=1)
    pooled, _ = visual._pool(x)  # private in open_clip 3.3: pinned in pyproject.toml, checked by a test
    return pooled
