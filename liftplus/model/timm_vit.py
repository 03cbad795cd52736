"""ImageNet-21k ViTs through timm, converted into open_clip's ``VisionTransformer``.

The reference (``PEFT_ViT`` on a timm ``VisionTransformer``) feeds its PEFT blocks
from ``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks`` and ``norm`` and
takes the class token after ``norm``. A plain timm ViT block computes exactly what
an open_clip ``ResidualAttentionBlock`` computes (pre-norm, packed q/k/v, GELU MLP,
optional layer scale), so instead of a second PEFT wrapper the timm weights are
copied into an open_clip ``VisionTransformer`` built to match: no ``ln_pre``, no
projection, LayerNorm eps from timm, GELU, and a patch embedding with timm's bias
(open_clip's ``conv1`` has none; it is swapped for a biased one). Every PEFT method
of :mod:`liftplus.model.peft` then applies unchanged, and a test checks the
features against timm's own ``forward_features(x)[:, 0]``.

Names are ``timm/<architecture>``: a timm model (``timm/vit_base_patch16_224``) or a
config in ``configs/timm/`` (``timm/liftplus-tiny-vit``). ``model.pretrained`` is a
local timm state dict (.pth/.bin/.safetensors; its ``head.*`` classifier is
ignored) or a timm pretrained tag of the architecture (downloads through timm).
These backbones have no text tower.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Optional

import timm
import torch
from open_clip.transformer import LayerNorm, LayerScale, VisionTransformer
from timm.layers import Mlp, PatchEmbed
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import nn

from liftplus.errors import CheckpointError, ParamsError
from liftplus.io import is_checkpoint_file
from liftplus.params import TIMM_PREFIX

CONFIG_DIR = Path(__file__).parent / "configs" / "timm"
TINY_TIMM_MODEL = f"{TIMM_PREFIX}liftplus-tiny-vit"
IN21K_MODELS = ("vit_base_patch16_224", "vit_base_patch16_384", "vit_large_patch16_224", "vit_large_patch16_384")
"""The reference's IN21K-ViT-B/16, -B/16@384px, -L/16, -L/16@384px."""
_PREPROCESS_KEYS = ("mean", "std")


class TimmBackbone(nn.Module):
    """The image encoder of a timm ViT as open_clip's ``VisionTransformer`` (``visual``); no text tower."""

    def __init__(self, visual: VisionTransformer, name: str):
        super().__init__()
        self.visual = visual
        self.name = name
        self.logit_scale = None


def is_timm_name(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def architecture(name: str) -> str:
    """The timm architecture (or local config) ``name`` names; ParamsError for an unknown one."""
    arch = name[len(TIMM_PREFIX) :]
    if "." in arch:
        raise ParamsError(
            f"model.name: '{name}' holds a pretrained tag; name the architecture "
            f"({TIMM_PREFIX}{arch.split('.')[0]}) and put the tag in model.pretrained"
        )
    if local_config(arch) is None and not (arch and timm.is_model(arch)):
        local = ", ".join(f"{TIMM_PREFIX}{p.stem}" for p in sorted(CONFIG_DIR.glob("*.json")))
        raise ParamsError(
            f"model.name: '{name}' is not a timm model (e.g. {TIMM_PREFIX}{IN21K_MODELS[0]}, {local}; "
            "see timm.list_models('vit_*'))"
        )
    return arch


@functools.cache
def local_config(arch: str) -> Optional[dict[str, Any]]:
    path = CONFIG_DIR / f"{arch}.json"
    return json.loads(path.read_text()) if arch and path.is_file() else None


def config_identity(name: str) -> dict[str, Any]:
    """What identifies the architecture for the fingerprint: the local config, or timm's name."""
    arch = architecture(name)
    return local_config(arch) or {"timm_architecture": arch}


def classify_pretrained(name: str, pretrained: str) -> str:
    """'tag' for a timm pretrained tag of the architecture, 'file' for a local checkpoint."""
    arch = architecture(name)
    if local_config(arch) is None and timm.list_pretrained(f"{arch}.{pretrained}", exclude_filters=""):
        return "tag"
    if is_checkpoint_file(pretrained):
        return "file"
    tags = [t.split(".", 1)[1] for t in timm.list_pretrained(f"{arch}.*")] if local_config(arch) is None else []
    raise CheckpointError(
        f"model.pretrained: '{pretrained}' is neither a local checkpoint file nor a timm pretrained tag "
        f"of {arch} (its tags: {', '.join(tags) or 'none'})"
    )


def tag_identity(name: str, pretrained: str) -> str:
    cfg = timm.models.get_pretrained_cfg(f"{architecture(name)}.{pretrained}")
    return f"tag={pretrained} hf_hub={cfg.hf_hub_id or ''} url={cfg.url or ''}"


def tower_shape(name: str) -> dict[str, int]:
    """Width, depth and MLP width of the ViT, from a model built on the meta device (no memory, no download)."""
    with torch.device("meta"):
        vit = _create(architecture(name))
    block = vit.blocks[0]
    width = vit.embed_dim
    return {"width": width, "layers": len(vit.blocks), "mlp": block.mlp.fc1.out_features, "embed": width}


def _create(arch: str, **kwargs: Any) -> TimmVisionTransformer:
    """The timm ViT (classifier head removed), randomly initialised by timm; nothing downloads."""
    local = local_config(arch)
    if local is not None:
        args = {k: v for k, v in local.items() if k not in _PREPROCESS_KEYS}
        return TimmVisionTransformer(**args, num_classes=0)
    model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    if not isinstance(model, TimmVisionTransformer):
        raise ParamsError(f"model.name: '{TIMM_PREFIX}{arch}' is not a timm VisionTransformer (LIFT+ needs a ViT)")
    return model


def load_timm(name: str, pretrained: Optional[str], seed: int, load_error) -> tuple[TimmBackbone, dict[str, Any]]:
    """The timm ViT ``name`` with ``pretrained`` weights (None: timm's random init for ``seed``), converted.

    Returns the backbone (every parameter frozen) and the preprocessing config (image size, mean, std).
    ``load_error(name, where, exc)`` turns a loading exception into a one-line CheckpointError.
    """
    arch = architecture(name)
    kind = None if pretrained is None else classify_pretrained(name, pretrained)
    if kind == "tag":
        try:
            vit = timm.create_model(f"{arch}.{pretrained}", pretrained=True, num_classes=0)
        except Exception as exc:  # hub/network/IO errors from huggingface_hub, urllib, torch
            if isinstance(exc, (MemoryError, KeyboardInterrupt)):
                raise
            raise CheckpointError(
                f"model.pretrained: cannot fetch timm weights {arch}.{pretrained} (offline? give a local file): "
                f"{_first_line(exc)}"
            ) from None
    elif kind == "file":
        with torch.device("meta"):
            vit = _create(arch)
        state = _read_state(pretrained, name, load_error)
        try:
            vit.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            raise load_error(name, pretrained, exc) from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vit = _create(arch)
    visual = to_open_clip(vit, name)
    visual.requires_grad_(False)
    return TimmBackbone(visual, name), _preprocess_cfg(arch, vit, None if kind != "tag" else pretrained)


def _read_state(path: str, name: str, load_error) -> dict[str, torch.Tensor]:
    try:
        state = timm.models.load_state_dict(path, use_ema=False, weights_only=True)
    except Exception as exc:  # torch/safetensors raise RuntimeError, UnpicklingError, zip errors, ...
        if isinstance(exc, (MemoryError, KeyboardInterrupt)):
            raise
        if type(exc).__name__ == "SafetensorError":
            raise CheckpointError(f"{path}: corrupt safetensors file ({_first_line(exc)})") from None
        raise load_error(name, path, exc) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: not a timm state dict (a mapping of names to tensors)")
    # timm's classifier (ImageNet-1k/21k head) is not part of the feature; the cosine head replaces it.
    # Weights stored in half precision are used in float32, as open_clip's copy into its fp32 model does.
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items() if not k.startswith("head.")}


def _preprocess_cfg(arch: str, vit: TimmVisionTransformer, tag: Optional[str]) -> dict[str, Any]:
    """Image size from the model; mean/std from the local config or timm's pretrained config (0.5 for the
    in21k ViTs, as the reference's configs/backbone/in21k_*.yaml)."""
    local = local_config(arch)
    if local is not None:
        mean, std = local.get("mean", (0.5,) * 3), local.get("std", (0.5,) * 3)
    else:
        cfg = timm.models.get_pretrained_cfg(f"{arch}.{tag}" if tag else arch)
        mean, std = (cfg.mean, cfg.std) if cfg is not None else ((0.5,) * 3, (0.5,) * 3)
    return {"size": vit.patch_embed.img_size[0], "mean": tuple(mean), "std": tuple(std), "interpolation": "bicubic"}


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip() or type(exc).__name__).splitlines()[0]
    return text if len(text) <= 200 else text[:197] + "..."


def _check_plain(vit: TimmVisionTransformer, name: str) -> None:
    """ParamsError unless ``vit`` is a ViT the conversion reproduces exactly (the reference's IN21K ViTs are)."""
    block = vit.blocks[0]
    norm_eps = {m.eps for m in vit.modules() if isinstance(m, nn.LayerNorm)}
    problems = {
        "a class token": vit.cls_token is not None,
        "no register tokens": vit.reg_token is None,
        "a position embedding that covers the class token": vit.pos_embed is not None and not vit.no_embed_class,
        "a fixed image size": not vit.dynamic_img_size,
        "class-token pooling": vit.global_pool == "token" and vit.attn_pool is None,
        "no pre-norm": isinstance(vit.norm_pre, nn.Identity),
        "a plain square patch embedding": type(vit.patch_embed) is PatchEmbed
        and isinstance(vit.patch_embed.norm, nn.Identity)
        and vit.patch_embed.img_size is not None
        and vit.patch_embed.img_size[0] == vit.patch_embed.img_size[1]
        and vit.patch_embed.patch_size[0] == vit.patch_embed.patch_size[1],
        "plain pre-norm blocks": all(type(b) is Block for b in vit.blocks),
        "plain attention": all(
            type(b.attn) is Attention
            and isinstance(b.attn.q_norm, nn.Identity)
            and isinstance(b.attn.norm, nn.Identity)
            and b.attn.gate is None
            and b.attn.attn_dim == vit.embed_dim
            and b.attn.proj.bias is not None
            for b in vit.blocks
        ),
        "a GELU MLP": all(
            type(b.mlp) is Mlp
            and type(b.mlp.act) is nn.GELU
            and b.mlp.act.approximate == "none"
            and isinstance(b.mlp.norm, nn.Identity)
            and b.mlp.fc1.bias is not None
            and b.mlp.fc1.out_features == block.mlp.fc1.out_features
            for b in vit.blocks
        ),
        "the same layer scale in every block": len(
            {type(b.ls1) for b in vit.blocks} | {type(b.ls2) for b in vit.blocks}
        )
        == 1,
        "LayerNorms of one eps": len(norm_eps) == 1,
    }
    missing = [what for what, ok in problems.items() if not ok]
    if missing:
        raise ParamsError(f"model.name: '{name}' is not a plain ViT liftplus can use: it needs {missing[0]}")


def to_open_clip(vit: TimmVisionTransformer, name: str = "timm ViT") -> VisionTransformer:
    """An open_clip ``VisionTransformer`` sharing ``vit``'s weights, computing its class-token feature."""
    _check_plain(vit, name)
    width, blocks = vit.embed_dim, vit.blocks
    mlp_width = blocks[0].mlp.fc1.out_features
    patch = vit.patch_embed.patch_size[0]
    layer_scale = not isinstance(blocks[0].ls1, nn.Identity)
    eps = vit.norm.eps
    with torch.device("meta"):
        visual = VisionTransformer(
            image_size=vit.patch_embed.img_size[0],
            patch_size=patch,
            width=width,
            layers=len(blocks),
            heads=blocks[0].attn.num_heads,
            mlp_ratio=mlp_width / width,
            ls_init_value=1.0 if layer_scale else None,
            output_dim=width,
            no_ln_pre=True,
            act_layer=nn.GELU,
            norm_layer=functools.partial(LayerNorm, eps=eps),
        )
        has_bias = vit.patch_embed.proj.bias is not None
        visual.conv1 = nn.Conv2d(3, width, kernel_size=patch, stride=patch, bias=has_bias)
    visual.proj = None
    if visual.transformer.resblocks[0].mlp.c_fc.out_features != mlp_width:
        raise ParamsError(f"model.name: '{name}': MLP width {mlp_width} is no whole multiple open_clip can build")
    visual.load_state_dict(_open_clip_state(vit), strict=True, assign=True)
    return visual


def _open_clip_state(vit: TimmVisionTransformer) -> dict[str, torch.Tensor]:
    """``vit``'s tensors under open_clip ``VisionTransformer`` names (views, not copies)."""
    width = vit.embed_dim
    state = {
        "conv1.weight": vit.patch_embed.proj.weight,
        "class_embedding": vit.cls_token.reshape(width),
        "positional_embedding": vit.pos_embed.reshape(-1, width),
        "ln_post.weight": vit.norm.weight,
        "ln_post.bias": vit.norm.bias,
    }
    if vit.patch_embed.proj.bias is not None:
        state["conv1.bias"] = vit.patch_embed.proj.bias
    for index, block in enumerate(vit.blocks):
        qkv = block.attn.qkv
        pairs = {
            "ln_1": block.norm1,
            "attn.out_proj": block.attn.proj,
            "ln_2": block.norm2,
            "mlp.c_fc": block.mlp.fc1,
            "mlp.c_proj": block.mlp.fc2,
        }
        prefix = f"transformer.resblocks.{index}."
        for ours, theirs in pairs.items():
            state[f"{prefix}{ours}.weight"] = theirs.weight
            state[f"{prefix}{ours}.bias"] = theirs.bias
        state[f"{prefix}attn.in_proj_weight"] = qkv.weight
        # open_clip's attention always has a q/k/v bias: a timm ViT without one gets zeros (the same output)
        state[f"{prefix}attn.in_proj_bias"] = qkv.bias if qkv.bias is not None else qkv.weight.new_zeros(3 * width)
        if isinstance(block.ls1, LayerScale) or hasattr(block.ls1, "gamma"):
            state[f"{prefix}ls_1.gamma"] = block.ls1.gamma
            state[f"{prefix}ls_2.gamma"] = block.ls2.gamma
    return {k: v.detach() for k, v in state.items()}
