"""evaluate.precision fp16 on CUDA: the reference's test model (``model.half()`` with fp32 LayerNorms)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liftplus.model import ModelConfig, build_model
from liftplus.runtime import autocast_dtype, half_weights, to_half_weights


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(ModelConfig(num_classes=5)).eval()


def test_fp16_and_auto_on_cuda_mean_half_weights_and_fp16_autocast_in_training():
    """``auto`` is the reference's precision on CUDA (fp16 test weights, fp16 amp training); nothing on the CPU."""
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert half_weights("fp16", cuda) and half_weights("auto", cuda)
    assert not any(half_weights(p, cpu) for p in ("fp16", "auto"))
    assert not any(half_weights(p, cuda) for p in ("bf16", "fp32"))
    assert [autocast_dtype(p, cuda) for p in ("auto", "fp16", "bf16", "fp32")] == [
        torch.float16,
        torch.float16,
        torch.bfloat16,
        None,
    ]
    assert all(autocast_dtype(p, cpu) is None for p in ("auto", "fp16", "bf16"))


def test_every_tensor_is_fp16_but_the_layernorms(model):
    half = to_half_weights(copy.deepcopy(model))
    norms = {name for name, m in half.named_modules() if isinstance(m, nn.LayerNorm)}
    assert norms, "the tiny ViT has LayerNorms"
    for name, tensor in [*half.named_parameters(), *half.named_buffers()]:
        if not tensor.is_floating_point():
            continue
        owner = name.rsplit(".", 1)[0]
        expected = torch.float32 if owner in norms else torch.float16
        assert tensor.dtype == expected, name


def test_a_layernorm_computes_in_fp32_and_returns_fp16(model):
    norm = copy.deepcopy(model.backbone.visual.ln_post)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.1, 0.1)
    x = torch.randn(3, norm.weight.shape[0]).half() * 4
    expected = F.layer_norm(x.float(), norm.normalized_shape, norm.weight, norm.bias, norm.eps).half()
    to_half_weights(norm)
    out = norm(x)
    assert out.dtype == torch.float16
    assert torch.equal(out, expected)


def test_half_model_gives_the_fp32_logits_to_fp16_precision(model):
    size = model.preprocess.image_size
    images = torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(images)
        half = to_half_weights(copy.deepcopy(model))(images)
    assert half.dtype == torch.float16
    difference = (half.float() - full).abs().max().item()
    assert 0 < difference < 0.02 * full.abs().max().item()
    assert torch.equal(half.float().argmax(1), full.argmax(1))
