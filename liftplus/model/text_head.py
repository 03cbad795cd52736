"""The text classifier: logits from the CLIP text tower, as the reference's ``classifier: None`` path.

Reference (github.com/shijxcs/LIFT-plus): ``trainer.py`` ``build_tuner`` (CoOp templates and
context locations, projection tuning, CLIP-Adapter), ``models/models.py`` ``PEFT_Text``
(``add_learnable_context``, ``_get_context_indices``, ``forward``) and ``PEFT_Model.forward``::

    image = f @ visual.proj (f itself for a CLIP ResNet) (+ image_adapter(image))
    text = text_tower(prompts with learnable context) @ text_projection (+ text_adapter(text))
    logits = exp(logit_scale) * normalize(image) @ normalize(text).T

The head keeps the tokenized class prompts (a buffer, saved with the checkpoint), the learnable
context and the adapters; the backbone (image projection, text tower, logit scale) is the
model's own, held without registering it again so that it is neither counted nor saved twice.
Text features are recomputed every training step (gradients reach the context, the adapters
and, with projection tuning, the projections) and cached in eval mode under no_grad until a
tensor they depend on changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from liftplus.errors import DataError, ParamsError
from liftplus.model.backbone import image_projection
from liftplus.model.peft import Bottleneck
from liftplus.model.resnet import is_resnet

PHOTO_TEMPLATE = "a photo of a {}."
PHOTO_CONTEXT = [0, 1, 2, 3, -1]
"""``coop_init: photo``: "a", "photo", "of", "a" and the final "." become the context."""
CLS_POSITIONS = ("end", "middle", "front")
EVAL_CHUNK = 1000
"""Prompts per text-tower pass when caching (the reference's ``compute_class_features``)."""


def coop_template(ctx_len: int, cls_pos: str = "end", init: Optional[str] = None) -> tuple[str, list[int]]:
    """The prompt template and the context's locations relative to the text between the start and
    end tokens, exactly as the reference's ``build_tuner``. ``ctx_len`` 0 (and no init): no learnable
    context, the reference's plain ``"a photo of a {}."`` (its ``coop: False``)."""
    if init == "photo":
        return PHOTO_TEMPLATE, list(PHOTO_CONTEXT)
    if init is not None:
        raise ParamsError(f"model.coop_init is {init!r}, expected null or photo")
    if ctx_len == 0:
        return PHOTO_TEMPLATE, []
    if cls_pos == "front":
        return "{}" + " X" * ctx_len + ".", list(range(-ctx_len - 1, -1))
    if cls_pos == "middle":
        left, right = ctx_len // 2, (ctx_len + 1) // 2
        return "X " * left + "{}" + " X" * right + ".", list(range(left)) + list(range(-right - 1, -1))
    if cls_pos == "end":
        return "X " * ctx_len + "{}.", list(range(ctx_len))
    raise ParamsError(f"model.coop_cls_pos is {cls_pos!r}, expected one of {', '.join(CLS_POSITIONS)}")


def context_indices(tokens: torch.Tensor, relative_loc: torch.Tensor) -> torch.Tensor:
    """The reference's ``_get_context_indices``: positions of the context in ``tokens`` [..., seq_len].

    With the start token at 0 and the end token at ``argmax`` (CLIP's end token has the highest id),
    ``relative_loc % (eot - 1) + 1``: non-negative locations count from the first word, negative
    ones from the end token back. Returns [..., ctx_len].
    """
    sot_idx, eot_idx = 0, tokens.argmax(dim=-1, keepdim=True)
    txt_len = eot_idx - (sot_idx + 1)
    return relative_loc % txt_len + (sot_idx + 1)


@dataclass(frozen=True)
class TextOptions:
    """What the text head needs from the model config."""

    model_name: str
    ctx_len: int = 4
    init: Optional[str] = None
    cls_pos: str = "end"
    clip_adapter_dim: Optional[int] = None
    proj_tuning: bool = False
    seed: int = 0


def text_options(config: Any) -> TextOptions:
    """The :class:`TextOptions` of a :class:`~liftplus.model.build.ModelConfig`."""
    return TextOptions(
        model_name=config.name,
        ctx_len=config.coop_ctx_len,
        init=config.coop_init,
        cls_pos=config.coop_cls_pos,
        clip_adapter_dim=config.clip_adapter_dim if config.clip_adapter else None,
        proj_tuning=config.proj_tuning,
        seed=config.seed,
    )


def context_length_of(options: TextOptions) -> int:
    """Learnable context tokens: the photo template's 5, else ``ctx_len``."""
    return len(PHOTO_CONTEXT) if options.init == "photo" else options.ctx_len


def adapter_parameters(embed_dim: int, bottleneck: int) -> int:
    """One reference ``Adapter``: LayerNorm ``2d``, down ``d*b + b``, up ``b*d + d``."""
    d, b = embed_dim, bottleneck
    return 2 * d + (d * b + b) + (b * d + d)


def text_head_counts(options: TextOptions, text_width: int, embed_dim: int, image_width: int) -> dict[str, int]:
    """Parameters the text head trains, from the reference's shapes: the context ``n * text_width``,
    CLIP-Adapter ``2 * Adapter(embed_dim)``, projection tuning ``visual.proj + text_projection``."""
    return {
        "context": context_length_of(options) * text_width,
        "clip_adapter": 2 * adapter_parameters(embed_dim, options.clip_adapter_dim) if options.clip_adapter_dim else 0,
        "proj_tuning": image_width * embed_dim + text_width * embed_dim if options.proj_tuning else 0,
    }


def text_tower_dims(model_name: str) -> dict[str, int]:
    """Embedding size, text width and context length of ``model_name``, from open_clip's JSON config
    (nothing built); open_clip's defaults where the config leaves them out."""
    cfg = open_clip.get_model_config(model_name) or {}
    text = cfg.get("text_cfg") or {}
    return {
        "embed": int(cfg.get("embed_dim", 512)),
        "width": int(text.get("width", 512)),
        "context_length": int(text.get("context_length", 77)),
    }


def text_head_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Shape of each ``head.*`` tensor a text head saves, for the checkpoint's pre-build check."""
    options = text_options(config)
    dims = text_tower_dims(config.name)
    shapes: dict[str, tuple[int, ...]] = {"head.tokens": (config.num_classes, dims["context_length"])}
    n = context_length_of(options)
    if n:
        shapes["head.ctx"] = (n, dims["width"])
    if options.clip_adapter_dim:
        for side in ("image_adapter", "text_adapter"):
            shapes |= Bottleneck.shapes(f"head.{side}", dims["embed"], options.clip_adapter_dim)
    return shapes


def _project(x: torch.Tensor, projection: Any) -> torch.Tensor:
    if isinstance(projection, nn.Linear):
        return projection(x)
    return x @ projection.to(x.dtype)


def _projection_tensors(projection: Any) -> list[torch.Tensor]:
    return list(projection.parameters()) if isinstance(projection, nn.Module) else [projection]


class TextHead(nn.Module):
    """Logits ``exp(logit_scale) * cos(image, text)`` against class prompts through the text tower."""

    def __init__(self, backbone: nn.Module, num_classes: int, options: TextOptions):
        super().__init__()
        _check_text_tower(backbone, options.model_name)
        # not a submodule: the model registers the backbone already (no second copy in state dicts)
        object.__setattr__(self, "_backbone", backbone)
        self.options = options
        self.template, ctx_loc = coop_template(options.ctx_len, options.cls_pos, options.init)
        context_length = int(backbone.positional_embedding.shape[0])
        if len(ctx_loc) + 3 > context_length:
            raise ParamsError(
                f"model.coop_ctx_len: {len(ctx_loc)} context tokens leave no room for the class name "
                f"in {options.model_name}'s {context_length}-token prompts"
            )
        device = backbone.token_embedding.weight.device
        self.register_buffer("tokens", torch.zeros(num_classes, context_length, dtype=torch.long, device=device))
        self.register_buffer("ctx_loc", torch.tensor(ctx_loc, dtype=torch.long, device=device), persistent=False)
        self._cache: Optional[tuple[Any, torch.Tensor]] = None
        self._indices: Optional[tuple[Any, torch.Tensor]] = None

        embedding = backbone.token_embedding.weight
        projection = image_projection(backbone.visual)
        embed_dim = backbone.visual.output_dim if projection is None else projection.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(options.seed)
            self.ctx = None
            if options.init == "photo":
                template_tokens = self._tokenize([self.template]).to(device)
                where = context_indices(template_tokens, self.ctx_loc)[0]
                self.ctx = nn.Parameter(embedding.detach()[template_tokens[0, where]].clone())
            elif ctx_loc:
                self.ctx = nn.Parameter(
                    torch.empty(len(ctx_loc), embedding.shape[1], dtype=embedding.dtype, device=device)
                )
                nn.init.normal_(self.ctx, std=0.02)
            self.image_adapter = self.text_adapter = None
            if options.clip_adapter_dim:
                factory = {"dtype": (embedding if projection is None else projection).dtype, "device": device}
                self.image_adapter = Bottleneck(embed_dim, options.clip_adapter_dim, **factory)
                self.text_adapter = Bottleneck(embed_dim, options.clip_adapter_dim, **factory)
        if options.proj_tuning:
            for tensor in [backbone.visual.proj, *_projection_tensors(backbone.text_projection)]:
                tensor.requires_grad_(True)

    @property
    def backbone(self) -> nn.Module:
        return self._backbone

    def _tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        tokens = open_clip.get_tokenizer(self.options.model_name)(list(prompts))
        return tokens[:, : self.tokens.shape[1]]

    def set_classnames(self, classnames: Sequence[str]) -> None:
        """Tokenize the class prompts (underscores read as spaces, as the reference's
        ``generate_class_prompts``) into the ``tokens`` buffer; DataError for a prompt that does
        not fit the text context or whose context tokens are not where the template puts them."""
        if len(classnames) != self.tokens.shape[0]:
            raise DataError(f"text head: {len(classnames)} class names for a {self.tokens.shape[0]}-class model")
        prompts = [self.template.format(name.replace("_", " ")) for name in classnames]
        tokens = self._tokenize(prompts)
        full = (tokens[:, -1] != 0).nonzero().flatten().tolist()
        if full:
            raise DataError(
                f"class '{_shown(classnames[full[0]])}': its prompt fills the text tower's {tokens.shape[1]}-token "
                "context; shorten the class name or model.coop_ctx_len"
            )
        if len(self.ctx_loc):
            template = self._tokenize([self.template])
            expected = template[0, context_indices(template, self.ctx_loc.cpu())[0]]
            where = context_indices(tokens, self.ctx_loc.cpu())
            wrong = (tokens.gather(1, where) != expected).any(dim=1).nonzero().flatten().tolist()
            if wrong:
                raise DataError(
                    f"class '{_shown(classnames[wrong[0]])}': its prompt does not keep the "
                    f"template's context tokens where model.coop_cls_pos puts them"
                )
        with torch.no_grad():
            self.tokens.copy_(tokens)

    def _text_tensors(self) -> list[torch.Tensor]:
        """Every tensor the text features depend on (the cache's key)."""
        bb = self._backbone
        tensors = [self.tokens, bb.token_embedding.weight, bb.positional_embedding, bb.attn_mask]
        tensors += [*bb.transformer.parameters(), *bb.ln_final.parameters()]
        tensors += _projection_tensors(bb.text_projection)
        if self.ctx is not None:
            tensors.append(self.ctx)
        if self.text_adapter is not None:
            tensors += list(self.text_adapter.parameters())
        return [t for t in tensors if t is not None]

    def _key(self, tensors: Sequence[torch.Tensor]) -> tuple:
        device_type = self.tokens.device.type
        amp = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        return (amp, *((t.data_ptr(), _version(t), t.dtype) for t in tensors))

    def _context_positions(self) -> Optional[torch.Tensor]:
        """``context_indices`` of the class prompts (None without a context), computed once per content
        of ``tokens``, after checking the prompts were set."""
        key = self._key([self.tokens])
        if self._indices is None or self._indices[0] != key:
            if not bool(self.tokens[:, 0].all()):
                raise DataError("text head: class prompts not set (set_classnames was never called)")
            self._indices = (key, context_indices(self.tokens, self.ctx_loc) if self.ctx is not None else None)
        return self._indices[1]

    def encode_text(self, tokens: torch.Tensor, positions: Optional[torch.Tensor]) -> torch.Tensor:
        """Projected (and adapted) text features of ``tokens`` [K, seq_len], context in place: [K, embed]."""
        bb = self._backbone
        cast_dtype = bb.transformer.get_cast_dtype()
        x = bb.token_embedding(tokens).to(cast_dtype)
        if self.ctx is not None:
            rows = torch.arange(x.shape[0], device=x.device).unsqueeze(1).expand_as(positions)
            x = x.index_put((rows, positions), self.ctx.to(x.dtype).expand(x.shape[0], -1, -1))
        x = x + bb.positional_embedding.to(cast_dtype)
        x = bb.transformer(x, attn_mask=bb.attn_mask)
        x = bb.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        x = _project(x, bb.text_projection)
        if self.text_adapter is not None:
            x = x + self.text_adapter(x)
        return x

    def text_features(self) -> torch.Tensor:
        """Normalised class text features [K, embed]: recomputed with gradients in training (or with
        grad enabled), cached in eval mode under no_grad."""
        positions = self._context_positions()
        if self.training or torch.is_grad_enabled():
            self._cache = None
            return F.normalize(self.encode_text(self.tokens, positions), dim=-1)
        key = self._key(self._text_tensors())
        if self._cache is None or self._cache[0] != key:
            chunks = [
                self.encode_text(
                    self.tokens[i : i + EVAL_CHUNK], None if positions is None else positions[i : i + EVAL_CHUNK]
                )
                for i in range(0, self.tokens.shape[0], EVAL_CHUNK)
            ]
            self._cache = (key, F.normalize(torch.cat(chunks), dim=-1))
        return self._cache[1]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        bb = self._backbone
        projection = image_projection(bb.visual)
        image = features if projection is None else features @ projection.to(features.dtype)
        if self.image_adapter is not None:
            image = image + self.image_adapter(image)
        text = self.text_features()
        return bb.logit_scale.exp() * F.normalize(image, dim=-1) @ text.to(image.dtype).T

    def extra_repr(self) -> str:
        return f"template={self.template!r}, classes={self.tokens.shape[0]}"


def _shown(name: str, limit: int = 60) -> str:
    return name if len(name) <= limit else name[: limit - 3] + "..."


def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # an inference tensor has no version counter (it cannot change outside inference mode)
        return -1


def _check_text_tower(backbone: nn.Module, name: str) -> None:
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection", "attn_mask")
    pool = getattr(backbone, "text_pool_type", None)
    visual = getattr(backbone, "visual", None)
    projected = visual is not None and (is_resnet(visual) or getattr(visual, "proj", None) is not None)
    if any(getattr(backbone, attr, None) is None for attr in needed) or pool != "argmax" or not projected:
        raise ParamsError(
            f"model.name: {name} has no CLIP text tower with argmax pooling and projections, "
            "which the text classifier (train.method coop) needs"
        )
