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
from typing import Optional, get_args

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNormFp32
from torch import nn

from liftplus.params import PeftName

PEFT_METHODS: tuple[str, ...] = get_args(PeftName)

_WEIGHT_LEVEL = {"lora", "ssf"}
"""Tuners that act inside the attention: they need the block's weights, not ``nn.MultiheadAttention``."""


def default_bottleneck(peft: str, num_classes: int, num_layers: int) -> Optional[int]:
    """The reference's size rule (trainer.py ``build_tuner``) for K classes and L tuned blocks.

    AdaptFormer and Adapter: ``2 ** max(0, floor(log2(K / 2L)))``; LoRA:
    ``K / 4L``; VPT prompt length: ``K / L`` with L the number of prompted
    blocks (1 for shallow). Methods without a size give None.
    """
    divisor = {"adaptformer": 2, "adapter": 2, "lora": 4, "vpt-deep": 1, "vpt-shallow": 1}.get(peft)
    if divisor is None:
        return None
    tuned_layers = 1 if peft == "vpt-shallow" else num_layers
    return 2 ** max(0, int(math.log2(num_classes / (tuned_layers * divisor))))


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
            x = torch.cat([x[:, :1], prompt, x[:, 1 + self.prompts_in:]], dim=1)
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
        q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
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
        out = attn.out_proj(out.transpose(1, 2).reshape(batch, length, width))
        if "ssf_attn_out" in self.tuner:
            out = self.tuner["ssf_attn_out"](out)
        return out

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        mlp = self.block.mlp
        if "ssf_mlp_in" in self.tuner:
            x = self.tuner["ssf_mlp_in"](mlp[0](x))
            x = self.tuner["ssf_mlp_out"](mlp[2](mlp[1](x)))
        else:
            x = mlp(x)
        if "adapter" in self.tuner:
            x = x + self.tuner["adapter"](x)
        return x

    def _needs_weight_level(self) -> bool:
        return any(name.split("_")[0] in _WEIGHT_LEVEL for name in self.tuner)


def insert_peft(
    blocks: nn.ModuleList,
    peft: str,
    num_classes: int,
    bottleneck: Optional[int] = None,
    sdpa: bool = True,
) -> Optional[int]:
    """Wrap every block of ``blocks`` in a :class:`PeftBlock` and add the ``peft`` tuners, in place.

    The blocks must already be frozen; the tuners are created trainable and
    ``full``/``bitfit`` re-enable the blocks' own weights/biases. Returns the
    bottleneck (prompt length for VPT) used, None for methods without one.
    """
    if peft not in PEFT_METHODS:
        raise ValueError(f"unknown PEFT method '{peft}', expected one of {', '.join(PEFT_METHODS)}")
    rule = default_bottleneck(peft, num_classes, len(blocks))
    size = None if rule is None else (bottleneck if bottleneck is not None else rule)
    for index, block in enumerate(blocks):
        wrapped = block if isinstance(block, PeftBlock) else PeftBlock(block, sdpa=sdpa)
        wrapped.sdpa = sdpa
        blocks[index] = wrapped
        if peft == "adaptformer":
            wrapped.add_adaptformer(size)
        elif peft == "adapter":
            wrapped.add_adapter(size)
        elif peft == "lora":
            wrapped.add_lora(size)
        elif peft == "ssf":
            wrapped.add_ssf()
        elif peft == "vpt-deep":
            wrapped.add_prompt(size, prompts_in=0 if index == 0 else size)
        elif peft == "vpt-shallow" and index == 0:
            wrapped.add_prompt(size, prompts_in=0)
        elif peft == "full":
            wrapped.unfreeze_all()
        elif peft == "bitfit":
            wrapped.unfreeze_bias()
    return size
