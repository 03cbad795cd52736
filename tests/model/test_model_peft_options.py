"""The reference's remaining tuner options: per-layer placement, combined methods, AFT, the LayerNorm head.

Every count is checked against a closed-form number from the reference's formulas (trainer.py
``build_tuner``, models/models.py, models/modules.py), written out for the tiny model
(L = 4 blocks, d = 64, MLP 256).
"""

import math
import re

import pytest
import torch
import torch.nn.functional as F

from liftplus.errors import CheckpointError, ParamsError
from liftplus.model import ModelConfig, build_model, model_from_checkpoint, save_checkpoint
from liftplus.model.checkpoint import check_config_fits_state
from liftplus.model.heads import LayerNormClassifier
from liftplus.model.peft import aft_default_ratio, aft_mask, default_bottleneck, resolve_layers
from liftplus.params import ModelParams

L, D, MLP = 4, 64, 256
BLOCK = re.compile(r"backbone\.visual\.transformer\.resblocks\.(\d+)\.")


def _build(num_classes=100, **kwargs):
    model = build_model(ModelConfig(num_classes=num_classes, **kwargs))
    model.eval()
    return model


def _count(model) -> int:
    return sum(p.numel() for p in model.trainable_parameters())


def _tuned_blocks(model) -> list[int]:
    return sorted({int(m.group(1)) for n in model.trainable_state_dict() if (m := BLOCK.match(n))})


def _adaptformer(r: int) -> int:
    return 2 * D * r + r + 3 * D + 1


# ------------------------------------------------------------------ per-layer placement


def test_layer_specs_follow_the_reference_parse_layers():
    assert resolve_layers(None, 12) == list(range(12))
    assert resolve_layers(1, 12) == [11]
    assert resolve_layers(6, 12) == [6, 7, 8, 9, 10, 11]
    assert resolve_layers(0, 12) == []
    assert resolve_layers([0, 5, -1], 12) == [0, 5, 11]
    for bad in (13, [12], [1, 1], [-13], "3"):
        with pytest.raises(ParamsError, match="model.peft_layers"):
            resolve_layers(bad, 12)


def test_vit_b16_bottleneck_counts_only_the_tuned_blocks():
    # trainer.py: bottle_dim = 2 ** max(0, int(log2(K / (len(layers) * 2)))), len(layers) the tuned blocks
    assert [default_bottleneck("adaptformer", 1000, len(resolve_layers(k, 12))) for k in (1, 6, None)] == [256, 64, 32]
    assert default_bottleneck("adaptformer", 1000, 0) is None  # the reference divides by zero


@pytest.mark.parametrize(
    "layers, blocks, r",
    [
        (1, [3], 32),  # 2 ** floor(log2(100 / 2))
        (2, [2, 3], 16),  # 2 ** floor(log2(100 / 4))
        (None, [0, 1, 2, 3], 8),
        (4, [0, 1, 2, 3], 8),
        ([0, 2], [0, 2], 16),
        ([-1], [3], 32),
        (0, [], None),
    ],
)
def test_adaptformer_on_some_blocks_counts_and_places(layers, blocks, r):
    model = _build(peft="adaptformer", peft_layers=layers)
    assert model.bottleneck == r
    assert _tuned_blocks(model) == blocks
    assert _count(model) == len(blocks) * (_adaptformer(r) if r else 0) + 100 * D
    closed_form = {1: 1 * (2 * 64 * 32 + 32 + 192 + 1), 2: 2 * (2 * 64 * 16 + 16 + 192 + 1), None: 4 * (1024 + 8 + 193)}
    if not isinstance(layers, list) and layers in closed_form:
        assert _count(model) - 100 * D == closed_form[layers]  # 4321, 4514, 4900


def test_every_block_listed_is_the_default_model_bit_for_bit():
    default = _build(num_classes=10).trainable_state_dict()
    for spec in (4, [0, 1, 2, 3], [3, 2, 1, 0]):
        same = _build(num_classes=10, peft_layers=spec).trainable_state_dict()
        assert list(same) == list(default)
        assert all(torch.equal(same[k], default[k]) for k in default)
    assert "peft_layers" not in ModelConfig(num_classes=10).to_dict()


@pytest.mark.parametrize(
    "peft, per_block",
    [
        ("full", 4 * D * D + 2 * D * MLP + 9 * D + MLP),
        ("bitfit", 7 * D + MLP),
        ("lora", 2 * 2 * D * 8),  # r = 2 ** floor(log2(100 / (2 * 4))) = 8 on 2 blocks
        ("ssf", 2 * (5 * D + MLP)),
    ],
)
def test_other_methods_on_the_last_blocks(peft, per_block):
    model = _build(peft=peft, peft_layers=2)
    assert _tuned_blocks(model) == [2, 3]
    assert _count(model) == 2 * per_block + 100 * D


def test_vpt_deep_on_chosen_blocks_drops_earlier_prompts_and_sizes_by_their_count():
    model = _build(peft="vpt-deep", peft_layers=[1, 3])
    blocks = model.peft_blocks()
    r = 32  # 2 ** floor(log2(100 / 2))
    assert [b.prompt is not None for b in blocks] == [False, True, False, True]
    assert (blocks[1].prompts_in, blocks[3].prompts_in) == (0, r)
    assert _count(model) == 2 * r * D + 100 * D
    with torch.no_grad():
        assert model.features(torch.randn(2, 3, 32, 32)).shape == (2, D)
    with pytest.raises(ParamsError, match="vpt-shallow"):
        _build(peft="vpt-shallow", peft_layers=1)


def test_out_of_range_layers_are_a_params_error():
    with pytest.raises(ParamsError, match="model.peft_layers: 5 is not between 0 and the model's 4 blocks"):
        _build(peft_layers=5)
    with pytest.raises(ParamsError, match="no block index"):
        _build(peft_layers=[4])


# ------------------------------------------------------------------ combined methods


def test_bitfit_plus_adaptformer_is_the_sum_of_both():
    both = _build(peft=["adaptformer", "bitfit"])
    assert both.config.peft == ("bitfit", "adaptformer")  # the reference's order, whatever the listing
    assert _count(both) == L * (_adaptformer(8) + 7 * D + MLP) + 100 * D
    assert _count(both) == 4 * (1225 + 704) + 6400  # 14116
    assert _count(both) == _count(_build(peft="adaptformer")) + _count(_build(peft="bitfit")) - 100 * D


def test_full_plus_bitfit_counts_shared_biases_once_and_aft_on_top_of_bitfit_adds():
    assert _count(_build(peft=["full", "bitfit"])) == _count(_build(peft="full"))
    aft_bitfit = _build(peft=["bitfit", "aft"], aft_ratio=0.01)
    assert _count(aft_bitfit) == L * (7 * D + MLP + 491) + 100 * D


def test_combined_methods_start_at_the_frozen_features(images, reference_features):
    model = _build(peft=["bitfit", "adaptformer", "lora", "aft"])
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), reference_features(images), rtol=1e-5, atol=1e-5)


def test_model_peft_list_from_params_reaches_the_config():
    params = ModelParams(peft=["adaptformer", "bitfit"], peft_layers=[0, 3])
    config = ModelConfig.for_method(params, "lift+", num_classes=10)
    assert config.peft == ("bitfit", "adaptformer") and config.peft_layers == (0, 3)
    assert config.to_dict()["peft"] == ["bitfit", "adaptformer"]
    assert ModelConfig.model_validate(config.to_dict()) == config
    assert ModelConfig.for_method(ModelParams(peft=["adaptformer"]), "lift+", 10) == ModelConfig(num_classes=10)
    assert ModelConfig.for_method(params, "lp", num_classes=10).peft_layers is None
    # run_partial.sh: -m fft v.fft_layers k
    assert ModelConfig.for_method(ModelParams(peft_layers=3), "fft", 10).peft_layers == 3
    for bad in (["none", "lora"], ["vpt-deep", "vpt-shallow"], ["lora", "lora"], []):
        with pytest.raises(ValueError):
            ModelParams(peft=bad)


# ------------------------------------------------------------------ AFT


def test_aft_mask_is_the_reference_generate_mask():
    mask = aft_mask((3 * D, D), 0.01, seed=0)
    chosen = torch.randperm(3 * D * D, generator=torch.Generator().manual_seed(0), dtype=torch.int64)[:122]
    assert mask.sum() == 122 == int(3 * D * D * 0.01)
    assert torch.equal(mask.flatten().nonzero().flatten(), chosen.sort().values)
    assert not torch.equal(aft_mask((3 * D, D), 0.01, seed=1), mask)


def test_aft_counts_per_location():
    # per block, int(numel * 0.01) of each weight and bias: attn 122 + 1 + 40 + 0, mlp 163 + 2 + 163 + 0
    assert _count(_build(peft="aft", aft_ratio=0.01, aft_loc="attn")) == L * 163 + 100 * D
    assert _count(_build(peft="aft", aft_ratio=0.01, aft_loc="mlp")) == L * 328 + 100 * D
    assert _count(_build(peft="aft", aft_ratio=0.01)) == L * 491 + 100 * D


def test_aft_default_ratio_trains_about_k_times_d():
    ratio = aft_default_ratio(100, L, D, "all")
    assert ratio == 100 / (4 * (64 * 12 + 9))
    # int(n * ratio): 395 + 6 + 131 + 2 (attn) + 527 + 8 + 527 + 2 (mlp) = 1598 a block, ~K*d = 6400 in all
    assert _count(_build(peft="aft")) == L * 1598 + 100 * D
    assert aft_default_ratio(1000, 12, 768, "attn") == 1000 / (12 * (768 * 4 + 4))
    assert aft_default_ratio(1000, 12, 768, "mlp") == 1000 / (12 * (768 * 8 + 5))
    # one block: ratio 100 / 777, 1581 + 24 + 527 + 8 + 2108 + 32 + 2108 + 8
    assert _count(_build(peft="aft", peft_layers=1)) - 100 * D == 6396


@pytest.mark.parametrize("sdpa", [True, False])
def test_aft_step_changes_only_the_masked_entries(sdpa, images, reference_features):
    model = _build(num_classes=10, peft="aft", aft_ratio=0.05, sdpa=sdpa)
    with torch.no_grad():
        torch.testing.assert_close(model.features(images), reference_features(images), rtol=1e-5, atol=1e-5)
    block = model.peft_blocks()[1]
    tuner, base = block.tuner["aft_mlp_in"], block.block.mlp[0]
    frozen = base.weight.detach().clone()
    assert not base.weight.requires_grad and tuner.weight.requires_grad
    model.train()
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.5)
    F.cross_entropy(model(images), torch.tensor([0, 3, 5, 9])).backward()
    optimizer.step()
    merged, _ = tuner.merged(base.weight, base.bias)
    changed = merged != frozen
    assert changed.any()
    assert not (changed & ~tuner.weight_mask).any()  # only masked entries move
    assert torch.equal(base.weight, frozen)  # the backbone's own tensor stays frozen
    with torch.no_grad():
        assert not torch.allclose(model.features(images), reference_features(images), atol=1e-4)


def test_aft_masks_are_the_same_in_every_block_as_the_reference_seeds_each_tensor_alike():
    model = _build(peft="aft", aft_ratio=0.1, aft_seed=3)
    masks = [b.tuner["aft_attn_in"].weight_mask for b in model.peft_blocks()]
    assert all(torch.equal(m, masks[0]) for m in masks)
    assert torch.equal(masks[0], aft_mask((3 * D, D), 0.1, seed=3))


# ------------------------------------------------------------------ checkpoints


@pytest.mark.parametrize(
    "config",
    [
        {"peft_layers": 2},
        {"peft_layers": [0, 3], "peft": "lora"},
        {"peft": ["bitfit", "adaptformer"]},
        {"peft": "aft", "aft_ratio": 0.02, "aft_loc": "mlp", "aft_seed": 5},
        {"peft": "aft", "peft_layers": 1},
        {"peft": ["vpt-deep", "aft"], "peft_layers": [1, 2]},
        {"classifier": "layernorm"},
    ],
)
def test_checkpoint_round_trip_for_each_option(config, tmp_path, images, perturb):
    model = _build(num_classes=12, **config)
    perturb(model)
    path = tmp_path / "adapter.pt"
    save_checkpoint(path, model)
    loaded, loaded_config, _ = model_from_checkpoint(path, num_classes=12)
    assert loaded_config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_the_config_check_refuses_other_layers_ratio_or_methods(tmp_path):
    state = _build(num_classes=12, peft_layers=[0, 2]).trainable_state_dict()
    ok = ModelConfig(num_classes=12, peft_layers=(0, 2))
    check_config_fits_state(ok, state, "x.pt")
    with pytest.raises(CheckpointError, match=r"tensors in blocks \[0, 2\], the config tunes \[2, 3\]"):
        check_config_fits_state(ok.model_copy(update={"peft_layers": 2}), state, "x.pt")
    with pytest.raises(CheckpointError, match="has shape \\(2, 64\\), expected \\(1, 64\\)"):  # r from 4 blocks, not 2
        check_config_fits_state(ok.model_copy(update={"peft_layers": None}), state, "x.pt")
    with pytest.raises(CheckpointError, match="config 'peft_layers': 9 is not between"):
        check_config_fits_state(ok.model_copy(update={"peft_layers": 9}), state, "x.pt")
    aft = ModelConfig(num_classes=12, peft="aft", aft_ratio=0.02)
    aft_state = build_model(aft).trainable_state_dict()
    check_config_fits_state(aft, aft_state, "x.pt")
    with pytest.raises(CheckpointError, match="tuner.aft_attn_in.weight' has shape \\(245,\\), expected \\(1228,\\)"):
        check_config_fits_state(aft.model_copy(update={"aft_ratio": 0.1}), aft_state, "x.pt")
    both = ModelConfig(num_classes=12, peft=("bitfit", "adaptformer"))
    check_config_fits_state(both, build_model(both).trainable_state_dict(), "x.pt")


# ------------------------------------------------------------------ LayerNorm classifier


def test_layernorm_classifier_is_the_reference_formula():
    head = LayerNormClassifier(D, 5)
    features = torch.randn(3, D) * 4 + 1
    variance = features.var(-1, unbiased=False, keepdim=True)
    normed = (features - features.mean(-1, keepdim=True)) / torch.sqrt(variance + 1e-12)
    expected = normed @ (head.weight / head.weight.norm(dim=-1, keepdim=True)).T
    torch.testing.assert_close(head(features), expected, rtol=1e-5, atol=1e-5)
    assert [n for n, _ in head.named_parameters()] == ["weight"]
    model = _build(num_classes=5, classifier="layernorm")
    assert isinstance(model.head, LayerNormClassifier) and _count(model) == L * _adaptformer(1) + 5 * D
    assert ModelParams(classifier="layernorm").classifier == "layernorm"


def test_vit_b16_closed_form_counts():
    """The reference's numbers for ViT-B/16 (d 768, 12 blocks), ImageNet-LT (K 1000), without building it."""
    d, k = 768, 1000
    assert 12 * _adaptformer_d(d, 32) + k * d == 12 * (2 * 768 * 32 + 32 + 3 * 768 + 1) + 768000
    assert 6 * _adaptformer_d(d, 64) == 6 * 100673
    assert math.isclose(aft_default_ratio(k, 12, d, "all") * 12 * (12 * d * d + 9 * d), k * d)


def _adaptformer_d(d: int, r: int) -> int:
    return 2 * d * r + r + 3 * d + 1
