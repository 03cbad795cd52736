import math
import re

import pytest
import torch

from liftplus.model import TINY_MODEL, ModelConfig, PeftBlock, build_model, default_bottleneck, load_backbone

L, D, MLP = 4, 64, 256  # the tiny model: blocks, width, MLP width


def _rule(num_classes: int, divisor: int, layers: int = L) -> int:
    return 2 ** max(0, math.floor(math.log2(num_classes / (divisor * layers))))


def _build(peft: str, num_classes: int = 10, **kwargs):
    model = build_model(ModelConfig(peft=peft, num_classes=num_classes, **kwargs))
    model.eval()
    return model


@pytest.mark.parametrize("peft", ["adaptformer", "lora", "adapter", "bitfit", "full", "none"])
@pytest.mark.parametrize("sdpa", [True, False])
def test_fresh_tuners_keep_the_frozen_features(peft, sdpa, images, reference_features):
    model = _build(peft, sdpa=sdpa)
    with torch.no_grad():
        features = model.features(images)
    torch.testing.assert_close(features, reference_features(images), rtol=1e-5, atol=1e-5)


def test_ssf_at_identity_keeps_the_frozen_features_and_its_init_moves_them(images, reference_features):
    model = _build("ssf")
    with torch.no_grad():
        moved = model.features(images)
        for block in model.peft_blocks():
            for ssf in block.tuner.values():
                ssf.scale.fill_(1.0)
                ssf.shift.zero_()
        identity = model.features(images)
    expected = reference_features(images)
    torch.testing.assert_close(identity, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(moved, expected, atol=1e-3)


def test_ssf_init_is_normal_around_one_and_zero():
    model = _build("ssf", num_classes=10)
    scales = torch.cat([t.scale for b in model.peft_blocks() for t in b.tuner.values()])
    shifts = torch.cat([t.shift for b in model.peft_blocks() for t in b.tuner.values()])
    assert scales.numel() == L * (3 * D + D + MLP + D)
    assert abs(scales.mean().item() - 1.0) < 0.005 and abs(scales.std().item() - 0.02) < 0.003
    assert abs(shifts.mean().item()) < 0.005 and abs(shifts.std().item() - 0.02) < 0.003


@pytest.mark.parametrize("peft", ["adaptformer", "adapter", "vpt-deep", "vpt-shallow", "full", "bitfit"])
def test_sdpa_and_stock_attention_agree_on_trained_tuners(peft, images, perturb):
    fused = _build(peft, sdpa=True)
    perturb(fused)
    stock = _build(peft, sdpa=False)
    stock.load_state_dict(fused.state_dict())
    with torch.no_grad():
        a, b = fused.features(images), stock.features(images)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    stock.train()
    fused.train()
    with torch.no_grad():
        torch.testing.assert_close(fused.features(images), stock.features(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("peft", ["lora", "ssf"])
def test_weight_level_tuners_act_even_without_sdpa(peft, images, reference_features, perturb):
    model = _build(peft, sdpa=False)
    perturb(model, std=0.2)
    with torch.no_grad():
        features = model.features(images)
    assert not torch.allclose(features, reference_features(images), atol=1e-3)


_TRAINABLE = {
    "adaptformer": r"tuner\.adaptformer\.(norm\.(weight|bias)|down\.(weight|bias)|up\.(weight|bias)|scale)",
    "adapter": r"tuner\.adapter\.(norm|down|up)\.(weight|bias)",
    "lora": r"tuner\.lora_[qv]\.(down|up)",
    "ssf": r"tuner\.ssf_(attn|mlp)_(in|out)\.(scale|shift)",
    "vpt-deep": r"prompt",
    "vpt-shallow": r"prompt",
    "bitfit": r"block\.(ln_1\.bias|attn\.in_proj_bias|attn\.out_proj\.bias|ln_2\.bias|mlp\.c_fc\.bias|mlp\.c_proj\.bias)",
    "full": r"block\..+",
    "none": r"(?!)",
}
_PER_BLOCK_TENSORS = {"adaptformer": 7, "adapter": 6, "lora": 4, "ssf": 8, "vpt-deep": 1, "bitfit": 6, "full": 12}


@pytest.mark.parametrize("peft", sorted(_TRAINABLE))
def test_only_the_intended_parameters_are_trainable(peft):
    model = _build(peft, num_classes=10)
    block_param = re.compile(r"backbone\.visual\.transformer\.resblocks\.(\d+)\.(" + _TRAINABLE[peft] + r")$")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert "head.weight" in trainable
    others = [name for name in trainable if name != "head.weight"]
    assert all(block_param.match(name) for name in others), others
    blocks = sorted({int(block_param.match(name).group(1)) for name in others})
    assert blocks == ([0] if peft == "vpt-shallow" else [] if peft == "none" else list(range(L)))
    if peft in _PER_BLOCK_TENSORS:
        assert len(others) == L * _PER_BLOCK_TENSORS[peft]
    text_and_stem = [n for n, p in model.named_parameters() if p.requires_grad and "resblocks" not in n]
    assert text_and_stem == ["head.weight"]


@pytest.mark.parametrize("num_classes", [10, 100, 365, 1000])
def test_adaptformer_trainable_count_is_the_lift_plus_formula(num_classes):
    model = _build("adaptformer", num_classes=num_classes)
    r = _rule(num_classes, 2)
    assert model.bottleneck == r
    expected = L * (2 * D * r + r + 3 * D + 1) + num_classes * D
    assert sum(p.numel() for p in model.trainable_parameters()) == expected


@pytest.mark.parametrize("num_classes", [10, 365])
def test_other_peft_counts_follow_their_shapes(num_classes):
    head = num_classes * D
    counts = {}
    for peft in ["lora", "adapter", "ssf", "vpt-deep", "vpt-shallow", "bitfit", "full", "none"]:
        counts[peft] = sum(p.numel() for p in _build(peft, num_classes=num_classes).trainable_parameters()) - head
    r_lora, r_adapter = _rule(num_classes, 4), _rule(num_classes, 2)
    assert counts["lora"] == L * 2 * (2 * D * r_lora)
    assert counts["adapter"] == L * (2 * D * r_adapter + r_adapter + 3 * D)
    assert counts["ssf"] == L * 2 * (3 * D + D + MLP + D)
    assert counts["vpt-deep"] == L * _rule(num_classes, 1) * D
    assert counts["vpt-shallow"] == _rule(num_classes, 1, layers=1) * D
    assert counts["bitfit"] == L * (D + 3 * D + D + D + MLP + D)
    assert counts["full"] == L * (4 * D + (3 * D * D + 3 * D) + (D * D + D) + (D * MLP + MLP) + (MLP * D + D))
    assert counts["none"] == 0


def test_bottleneck_override_replaces_the_rule():
    model = _build("adaptformer", num_classes=1000, bottleneck=3)
    assert model.bottleneck == 3
    assert model.peft_blocks()[0].tuner["adaptformer"].down.weight.shape == (3, D)


def test_vit_b16_bottleneck_reference_numbers():
    # ViT-B/16 has 12 blocks; CIFAR-100, ImageNet-LT/Places-LT-ish, Places-LT, ImageNet-LT, iNaturalist 2018
    classes = [10, 100, 365, 1000, 8142]
    assert [_rule(k, 2, layers=12) for k in classes] == [1, 4, 8, 32, 256]
    assert [default_bottleneck("adaptformer", k, 12) for k in classes] == [1, 4, 8, 32, 256]
    assert [default_bottleneck("lora", k, 12) for k in classes] == [_rule(k, 4, 12) for k in classes]
    assert default_bottleneck("ssf", 1000, 12) is None


def test_adaptformer_init_matches_the_reference():
    model = _build("adaptformer", num_classes=1000)
    tuner = model.peft_blocks()[0].tuner["adaptformer"]
    r = _rule(1000, 2)
    assert tuner.down.weight.shape == (r, D) and tuner.up.weight.shape == (D, r)
    assert torch.count_nonzero(tuner.up.weight) == 0 and torch.count_nonzero(tuner.up.bias) == 0
    assert torch.count_nonzero(tuner.down.bias) == 0
    bound = 1 / math.sqrt(D)  # kaiming_uniform(a=sqrt(5)) on fan_in D
    assert tuner.down.weight.abs().max() <= bound and tuner.down.weight.abs().max() > 0.9 * bound
    assert tuner.scale.item() == 1.0 and tuner.scale.shape == ()
    assert tuner.norm.weight.dtype == torch.float32 and torch.equal(tuner.norm.weight, torch.ones(D))


def test_lora_init_matches_the_reference():
    model = _build("lora", num_classes=1000)
    lora = model.peft_blocks()[0].tuner["lora_q"]
    r = _rule(1000, 4)
    assert lora.down.shape == (D, r) and lora.up.shape == (r, D) and lora.scale == 1 / r
    bound = 1 / math.sqrt(r)  # the reference initialises the [d, r] tensor, so fan_in is r
    assert lora.down.abs().max() <= bound and torch.count_nonzero(lora.up) == 0


def test_vpt_deep_replaces_the_prompt_in_every_block():
    model = _build("vpt-deep", num_classes=100)
    prompt_len = _rule(100, 1)
    blocks = model.peft_blocks()
    tokens = 1 + (32 // 4) ** 2
    x = torch.randn(2, tokens, D)
    with torch.no_grad():
        y = blocks[0](x)
        assert y.shape == (2, tokens + prompt_len, D)
        z = blocks[1](y)
        assert z.shape == y.shape
        y_changed = y.clone()
        y_changed[:, 1 : 1 + prompt_len] += 5.0  # the previous block's prompt outputs are discarded
        torch.testing.assert_close(blocks[1](y_changed), z)
    assert all(b.prompt.shape == (prompt_len, D) for b in blocks)
    assert 0.015 < torch.cat([b.prompt for b in blocks]).std().item() < 0.025


@pytest.mark.parametrize("peft", ["adaptformer", "lora", "adapter", "ssf", "vpt-deep", "bitfit", "full"])
def test_gradients_reach_every_tuner_and_no_frozen_parameter(peft, images, perturb):
    # K=100 gives r=8: in the last block only the class token reaches the loss, and with r=1
    # its single ReLU unit may be off for all four images.
    model = _build(peft, num_classes=100)
    model.train()
    perturb(model)  # move zero-initialised "up" weights so every tuner gets a non-zero gradient
    labels = torch.tensor([0, 30, 55, 99])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_blocks_are_wrapped_not_copied():
    model = _build("adaptformer")
    blocks = model.backbone.visual.transformer.resblocks
    assert all(isinstance(b, PeftBlock) for b in blocks)
    before = blocks[0].block.attn.in_proj_weight.data_ptr()
    assert model.backbone.state_dict()["visual.transformer.resblocks.0.block.attn.in_proj_weight"].data_ptr() == before


@pytest.mark.parametrize("sdpa", [True, False])
def test_sdpa_flag_picks_the_attention_path(sdpa, images, monkeypatch):
    model = _build("adaptformer", sdpa=sdpa)
    calls = []
    for block in model.peft_blocks():
        stock = block.block.attention
        monkeypatch.setattr(block.block, "attention", lambda *a, _stock=stock, **k: calls.append(1) or _stock(*a, **k))
    with torch.no_grad():
        model.features(images)
    assert len(calls) == (0 if sdpa else L)


def test_sdpa_path_honours_an_additive_attention_mask():
    backbone, _ = load_backbone(TINY_MODEL)
    text_block = backbone.transformer.resblocks[0]  # causal text block: the mask matters
    x = torch.randn(2, 77, D, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = text_block(x, attn_mask=backbone.attn_mask)
        got = PeftBlock(text_block, sdpa=True)(x, attn_mask=backbone.attn_mask)
        unmasked = PeftBlock(text_block, sdpa=True)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmasked, expected, atol=1e-3)
