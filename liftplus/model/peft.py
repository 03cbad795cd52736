"""Parameter-efficient fine-tuning modules inside open_clip's ViT blocks.

Each ``ResidualAttentionBlock`` of the image encoder is wrapped in a
:class:`PeftBlock` that reuses the block's own ``ln_1/attn/ls_1/ln_2/mlp/ls_2``
and adds tuners where the reference (LIFT-plus ``models/models.py``,
``PEFT_Block``/``PEFT_Attention``/``PEFT_MLP``) adds them. Every tuner starts
as the identity, so a freshly wrapped model computes the frozen backbone's
features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional, Union, get_args

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNormFp32
from torch import nn

from liftplus.errors import ParamsError
from liftplus.params import ModelParams, PeftName

PEFT_METHODS: tuple[str, ...] = get_args(PeftName)
APPLY_ORDER: tuple[str, ...] = ModelParams.PEFT_ORDER
"""The order the reference's ``build_tuner`` adds tuners in (fft, bitfit, pt, lora, adapter, adaptformer, ssf, aft)."""
AFT_LOCS = ("attn", "mlp", "all")

_WEIGHT_LEVEL = {"lora", "ssf", "aft"}
"""Tuners that act inside the attention: they need the block's weights, not ``nn.MultiheadAttention``."""

LayerSpec = Optional[Union[int, Sequence[int]]]


def peft_methods(peft: Union[str, Sequence[str]]) -> tuple[str, ...]:
    """``model.peft`` as a tuple of methods in the order they are applied (a name or a list of names)."""
    return ModelParams.normalize_peft(peft if isinstance(peft, str) else list(peft)) if peft else ("none",)


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """The reference's ``parse_layers``: None = every block, an int k = the last k, a list = those indices.

    Negative indices count from the end, as Python's; the result is sorted.
    """
    if spec is None:
        return list(range(num_layers))
    if isinstance(spec, bool) or not isinstance(spec, (int, Sequence)):
        raise ParamsError(f"model.peft_layers: {spec!r} is not null, an int or a list of ints")
    if isinstance(spec, int):
        if not 0 <= spec <= num_layers:
            raise ParamsError(f"model.peft_layers: {spec} is not between 0 and the model's {num_layers} blocks")
        return list(range(num_layers - spec, num_layers))
    layers = []
    for index in spec:
        if isinstance(index, bool) or not isinstance(index, int) or not -num_layers <= index < num_layers:
            raise ParamsError(f"model.peft_layers: {index!r} is no block index of a {num_layers}-block model")
        layers.append(index % num_layers)
    if len(set(layers)) != len(layers):
        raise ParamsError(f"model.peft_layers: {list(spec)} names a block twice")
    return sorted(layers)


def method_layers(peft: str, spec: LayerSpec, num_layers: int) -> list[int]:
    """The blocks ``peft`` tunes: VPT-shallow prompts the first block only, ``none`` tunes none."""
    if peft == "none":
        return []
    if peft == "vpt-shallow":
        if spec is not None:
            raise ParamsError("model.peft_layers: vpt-shallow prompts block 0 only; use vpt-deep to pick blocks")
        return [0]
    return resolve_layers(spec, num_layers)


def tuned_blocks(peft: Union[str, Sequence[str]], spec: LayerSpec, num_layers: int) -> list[int]:
    """Every block that holds a trained tensor of some method of ``peft``."""
    return sorted(set().union(*(method_layers(m, spec, num_layers) for m in peft_methods(peft))))


def default_bottleneck(peft: str, num_classes: int, num_layers: int) -> Optional[int]:
    """The reference's size rule (trainer.py ``build_tuner``) for K classes and L tuned blocks.

    AdaptFormer and Adapter: ``2 ** max(0, floor(log2(K / 2L)))``; LoRA:
    ``K / 4L``; VPT prompt length: ``K / L`` with L the number of prompted
    blocks (1 for shallow). Methods without a size, or on no block, give None.
    L counts the blocks that get the tuner (``len(layers)`` in the reference), not the model's depth.
    """
    divisor = {"adaptformer": 2, "adapter": 2, "lora": 4, "vpt-deep": 1, "vpt-shallow": 1}.get(peft)
    if divisor is None:
        return None
    tuned_layers = 1 if peft == "vpt-shallow" else num_layers
    if tuned_layers == 0:
        return None
    return 2 ** max(0, int(math.log2(num_classes / (tuned_layers * divisor))))


def tuner_sizes(
    peft: Union[str, Sequence[str]],
    num_classes: int,
    num_layers: int,
    bottleneck: Optional[int] = None,
    layers: LayerSpec = None,
) -> dict[str, int]:
    """Bottleneck (prompt length for VPT) of each sized method of ``peft``: ``bottleneck`` if given, else the
    rule for the blocks the method tunes; methods on no block get none."""
    sizes = {}
    for method in peft_methods(peft):
        rule = default_bottleneck(method, num_classes, len(method_layers(method, layers, num_layers)))
        if rule is not None:
            sizes[method] = bottleneck if bottleneck is not None else rule
    return sizes


def aft_default_ratio(num_classes: int, num_layers: int, width: int, loc: str) -> float:
    """The reference's AFT ratio when ``aft_ratio`` is None: about ``K * d`` weights in all, i.e.
    ``K / (L * (d * 4 + 4))`` (attn), ``K / (L * (d * 8 + 5))`` (mlp), ``K / (L * (d * 12 + 9))`` (all)."""
    per_width, offset = {"attn": (4, 4), "mlp": (8, 5), "all": (12, 9)}[loc]
    return num_classes / (num_layers * (width * per_width + offset))


def aft_ratio_used(aft_ratio: Optional[float], num_classes: int, tuned: int, width: int, loc: str) -> Optional[float]:
    """The AFT share ``insert_peft`` uses: ``aft_ratio``, else the reference's default for ``tuned`` blocks."""
    if aft_ratio is not None:
        return aft_ratio
    return aft_default_ratio(num_classes, tuned, width, loc) if tuned else None


def aft_mask(shape: Sequence[int], ratio: float, seed: int) -> torch.Tensor:
    """The reference's ``generate_mask``: ``int(numel * ratio)`` entries drawn by ``randperm`` from a
    generator seeded with ``seed`` afresh for every tensor."""
    generator = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    chosen = torch.randperm(numel, generator=generator, dtype=torch.int64)[: int(numel * ratio)]
    return torch.zeros(numel, dtype=torch.bool).scatter_(0, chosen, True).view(*shape)


def aft_count(numel: int, ratio: float) -> int:
    """Entries AFT trains in a tensor of ``numel`` entries (``randperm(numel)[:int(numel * ratio)]``)."""
    return min(numel, int(numel * ratio))


class Bottleneck(nn.Module):
    """The reference's ``Adapter``: up(relu(down(LN(x)))), zero at init."""

    def __init__(self, dim: int, bottleneck: int, dtype=None, device=None):
        super().__init__()
        self.norm = LayerNormFp32(dim, device=device)
        self.down = nn.Linear(dim, bottleneck, dtype=dtype, device=device)
        self.act = nn.ReLU(inplace=True)
        self.up = nn.Linear(bottleneck, dim, dtype=dtype, device=device)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(self.norm(x))))

    @staticmethod
    def shapes(prefix: str, dim: int, bottleneck: int) -> dict[str, tuple[int, ...]]:
        """The shape of each tensor of a ``Bottleneck(dim, bottleneck)`` saved under ``prefix``."""
        return {
            f"{prefix}.norm.weight": (dim,),
            f"{prefix}.norm.bias": (dim,),
            f"{prefix}.down.weight": (bottleneck, dim),
            f"{prefix}.down.bias": (bottleneck,),
            f"{prefix}.up.weight": (dim, bottleneck),
            f"{prefix}.up.bias": (dim,),
        }


class AdaptFormer(Bottleneck):
    """Bottleneck times a learnable scalar (init 1), run parallel to the MLP."""

    def __init__(self, dim: int, bottleneck: int, dtype=None, device=None):
        super().__init__(dim, bottleneck, dtype=dtype, device=device)
        self.scale = nn.Parameter(torch.ones([], dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


class LoRA(nn.Module):
    """x @ down @ up / r; ``down`` is [d, r] and Kaiming-initialised on that shape, as the reference."""

    def __init__(self, dim: int, bottleneck: int, dtype=None, device=None):
        super().__init__()
        self.down = nn.Parameter(torch.zeros(dim, bottleneck, dtype=dtype, device=device))
        self.up = nn.Parameter(torch.zeros(bottleneck, dim, dtype=dtype, device=device))
        self.scale = 1.0 / bottleneck
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))
        nn.init.zeros_(self.up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.down @ self.up) * self.scale


class SSF(nn.Module):
    """Per-channel scale and shift of a projection's output."""

    def __init__(self, dim: int, dtype=None, device=None):
        super().__init__()
        self.scale = nn.Parameter(torch.empty(dim, dtype=dtype, device=device))
        self.shift = nn.Parameter(torch.empty(dim, dtype=dtype, device=device))
        nn.init.normal_(self.scale, mean=1.0, std=0.02)
        nn.init.normal_(self.shift, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class MaskedLinear(nn.Module):
    """The reference's ``MaskedLinear`` (AFT): the frozen weight and bias with the ``mask``ed entries
    replaced by trainable copies, ``weight``/``bias`` (1-D, in mask order).

    The frozen tensors are passed to :meth:`forward`, not held, so the block's own parameters stay
    its own; the masks follow from ``ratio`` and ``seed`` and are not saved.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, ratio: float, seed: int):
        super().__init__()
        self.register_buffer("weight_mask", aft_mask(weight.shape, ratio, seed).to(weight.device), persistent=False)
        self.register_buffer("bias_mask", aft_mask(bias.shape, ratio, seed).to(bias.device), persistent=False)
        self.weight = nn.Parameter(weight.detach().masked_select(self.weight_mask).clone())
        self.bias = nn.Parameter(bias.detach().masked_select(self.bias_mask).clone())

    def merged(self, weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            weight.masked_scatter(self.weight_mask, self.weight.to(weight.dtype)),
            bias.masked_scatter(self.bias_mask, self.bias.to(bias.dtype)),
        )

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.merged(weight, bias))


class PeftBlock(nn.Module):
    """An open_clip ``ResidualAttentionBlock`` with tuners.

    ``out = x + ls_1(attn(ln_1(x)))``, then
    ``out + ls_2(mlp(ln_2(out)) + adaptformer(out))``, with LoRA on q and v,
    SSF after the attention and MLP projections, an Adapter after the MLP and
    VPT prompts inserted after the class token.

    ``sdpa`` computes attention from the block's own ``nn.MultiheadAttention``
    weights with ``F.scaled_dot_product_attention`` on the batch-first tensor
    (faster and lighter for training than the stock module); LoRA and SSF
    always take that path.
    """

    def __init__(self, block: nn.Module, sdpa: bool = True):
        super().__init__()
        if not getattr(block.attn, "_qkv_same_embed_dim", False) or hasattr(block, "ln_1_kv"):
            raise TypeError("PeftBlock needs a self-attention ResidualAttentionBlock with a packed in_proj")
        self.block = block
        self.sdpa = sdpa
        self.tuner = nn.ModuleDict()
        self.prompt: Optional[nn.Parameter] = None
        self.prompts_in = 0

    @property
    def width(self) -> int:
        return self.block.attn.embed_dim

    @property
    def _factory(self) -> dict:
        weight = self.block.attn.in_proj_weight
        return {"dtype": weight.dtype, "device": weight.device}

    def add_adaptformer(self, bottleneck: int) -> None:
        self.tuner["adaptformer"] = AdaptFormer(self.width, bottleneck, **self._factory)

    def add_adapter(self, bottleneck: int) -> None:
        self.tuner["adapter"] = Bottleneck(self.width, bottleneck, **self._factory)

    def add_lora(self, bottleneck: int) -> None:
        self.tuner["lora_q"] = LoRA(self.width, bottleneck, **self._factory)
        self.tuner["lora_v"] = LoRA(self.width, bottleneck, **self._factory)

    def add_ssf(self) -> None:
        mlp = self.block.mlp
        self.tuner["ssf_attn_in"] = SSF(3 * self.width, **self._factory)
        self.tuner["ssf_attn_out"] = SSF(self.width, **self._factory)
        self.tuner["ssf_mlp_in"] = SSF(mlp[0].out_features, **self._factory)
        self.tuner["ssf_mlp_out"] = SSF(mlp[2].out_features, **self._factory)

    def add_aft(self, ratio: float, loc: str = "all", seed: int = 0) -> None:
        """Train a random ``ratio`` of the weights and biases of the attention (``attn``), MLP or both."""
        if loc not in AFT_LOCS:
            raise ValueError(f"aft_loc is '{loc}', expected one of {', '.join(AFT_LOCS)}")
        attn, mlp = self.block.attn, self.block.mlp
        if loc in ("attn", "all"):
            self.tuner["aft_attn_in"] = MaskedLinear(attn.in_proj_weight, attn.in_proj_bias, ratio, seed)
            self.tuner["aft_attn_out"] = MaskedLinear(attn.out_proj.weight, attn.out_proj.bias, ratio, seed)
        if loc in ("mlp", "all"):
            self.tuner["aft_mlp_in"] = MaskedLinear(mlp[0].weight, mlp[0].bias, ratio, seed)
            self.tuner["aft_mlp_out"] = MaskedLinear(mlp[2].weight, mlp[2].bias, ratio, seed)

    def add_prompt(self, length: int, prompts_in: int) -> None:
        """Insert ``length`` prompt tokens after the class token, replacing the ``prompts_in`` already there."""
        self.prompt = nn.Parameter(torch.empty(length, self.width, **self._factory))
        nn.init.normal_(self.prompt, std=0.02)
        self.prompts_in = prompts_in

    def unfreeze_all(self) -> None:
        self.block.requires_grad_(True)

    def unfreeze_bias(self) -> None:
        for name, param in self.block.named_parameters():
            if name.endswith("bias"):
                param.requires_grad_(True)

    def forward(
        self,
        q_x: torch.Tensor,
        k_x: Optional[torch.Tensor] = None,
        v_x: Optional[torch.Tensor] = None,
        attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        if k_x is not None or v_x is not None:
            raise NotImplementedError("PeftBlock supports self-attention only")
        batch_first = self.block.attn.batch_first
        x = q_x if batch_first else q_x.transpose(0, 1)
        if self.prompt is not None:
            prompt = self.prompt.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], prompt, x[:, 1 + self.prompts_in :]], dim=1)
        x = x + self.block.ls_1(self._attention(self.block.ln_1(x), attn_mask))
        mlp_out = self._mlp(self.block.ln_2(x))
        if "adaptformer" in self.tuner:
            mlp_out = mlp_out + self.tuner["adaptformer"](x)
        x = x + self.block.ls_2(mlp_out)
        return x if batch_first else x.transpose(0, 1)

    def _attention(self, x: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        attn = self.block.attn
        if not (self.sdpa or self._needs_weight_level()):
            if attn.batch_first:
                return self.block.attention(q_x=x, attn_mask=attn_mask)
            return self.block.attention(q_x=x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)

        batch, length, width = x.shape
        if "aft_attn_in" in self.tuner:
            qkv = self.tuner["aft_attn_in"](x, attn.in_proj_weight, attn.in_proj_bias)
        else:
            qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.chunk(3, dim=-1)
        if "lora_q" in self.tuner:
            q = q + self.tuner["lora_q"](x)
            v = v + self.tuner["lora_v"](x)
        if "ssf_attn_in" in self.tuner:
            q, k, v = self.tuner["ssf_attn_in"](torch.cat([q, k, v], dim=-1)).chunk(3, dim=-1)
        heads = attn.num_heads
        q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)  # an additive mask, as the stock block.attention hands to MHA
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attn.dropout if self.training else 0.0
        )
        out = out.transpose(1, 2).reshape(batch, length, width)
        if "aft_attn_out" in self.tuner:
            out = self.tuner["aft_attn_out"](out, attn.out_proj.weight, attn.out_proj.bias)
        else:
            out = attn.out_proj(out)
        if "ssf_attn_out" in self.tuner:
            out = self.tuner["ssf_attn_out"](out)
        return out

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.block.mlp
        if "ssf_mlp_in" in self.tuner or "aft_mlp_in" in self.tuner:
            x = self._linear("mlp_in", mlp[0], x)
            x = self._linear("mlp_out", mlp[2], mlp[1](x))
        else:
            x = mlp(x)
        if "adapter" in self.tuner:
            x = x + self.tuner["adapter"](x)
        return x

    def _linear(self, where: str, linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``linear(x)`` with the AFT entries of ``aft_<where>`` and then the SSF of ``ssf_<where>``, if any."""
        aft, ssf = f"aft_{where}", f"ssf_{where}"
        x = self.tuner[aft](x, linear.weight, linear.bias) if aft in self.tuner else linear(x)
        return self.tuner[ssf](x) if ssf in self.tuner else x

    def _needs_weight_level(self) -> bool:
        return any(name.split("_")[0] in _WEIGHT_LEVEL for name in self.tuner)


def insert_peft(
    blocks: nn.ModuleList,
    peft: Union[str, Sequence[str]],
    num_classes: int,
    bottleneck: Optional[int] = None,
    sdpa: bool = True,
    layers: LayerSpec = None,
    aft_ratio: Optional[float] = None,
    aft_loc: str = "all",
    aft_seed: int = 0,
) -> Optional[int]:
    """Wrap every block of ``blocks`` in a :class:`PeftBlock` and add the ``peft`` tuners to the ``layers``
    (see :func:`resolve_layers`), in place.

    ``peft`` is a method or a list of them; they are added in the reference's order
    (:data:`APPLY_ORDER`), each to every tuned block before the next. The blocks must already be
    frozen; the tuners are created trainable and ``full``/``bitfit`` re-enable the blocks' own
    weights/biases. Returns the bottleneck (prompt length for VPT) of the first sized method, None
    if none has one.
    """
    methods = peft_methods(peft)
    if not set(methods) <= set(PEFT_METHODS):
        raise ValueError(f"unknown PEFT method '{peft}', expected one of {', '.join(PEFT_METHODS)}")
    sizes = tuner_sizes(methods, num_classes, len(blocks), bottleneck=bottleneck, layers=layers)
    for index, block in enumerate(blocks):
        wrapped = block if isinstance(block, PeftBlock) else PeftBlock(block, sdpa=sdpa)
        wrapped.sdpa = sdpa
        blocks[index] = wrapped
    for method in methods:
        tuned = method_layers(method, layers, len(blocks))
        size = sizes.get(method)
        ratio = aft_ratio_used(aft_ratio, num_classes, len(tuned), blocks[0].width, aft_loc)
        for position, index in enumerate(tuned):
            _add_tuner(blocks[index], method, size, prompted_before=position > 0, aft=(ratio, aft_loc, aft_seed))
    return next(iter(sizes.values()), None)


def _add_tuner(block: PeftBlock, method: str, size: Optional[int], prompted_before: bool, aft: tuple) -> None:
    if method == "adaptformer":
        block.add_adaptformer(size)
    elif method == "adapter":
        block.add_adapter(size)
    elif method == "lora":
        block.add_lora(size)
    elif method == "ssf":
        block.add_ssf()
    elif method in ("vpt-deep", "vpt-shallow"):
        # as the reference: a prompted block drops the prompts an earlier prompted block inserted
        block.add_prompt(size, prompts_in=size if prompted_before else 0)
    elif method == "aft":
        block.add_aft(*aft)
    elif method == "full":
        block.unfreeze_all()
    elif method == "bitfit":
        block.unfreeze_bias()
