"""CLIP ResNet backbones (open_clip ``ModifiedResNet``: RN50, RN101, ...) as the reference's ``PEFT_RN``.

The feature is the attention-pool output (no image projection); full fine-tuning trains every block
parameter, BitFit the blocks' biases (their BatchNorm biases), SSF one scale and shift of the pooled
feature; BatchNorm keeps its running statistics (the reference trains ``tuner.train()`` only, the
backbone stays in eval mode). Every expected set and count is computed here from the module or from
the reference's rules, on a tiny RN (layers 1-1-1-1, width 8) whose weights, BatchNorm affine
parameters and running statistics are all moved off open_clip's init and loaded from a local file.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F
import typer
from open_clip.modified_resnet import ModifiedResNet
from typer.testing import CliRunner

from liftplus.commands.peft_summary import peft_summary
from liftplus.errors import CheckpointError, ParamsError
from liftplus.model import (
    PEFT_METHODS,
    ModelConfig,
    backbone_fingerprint,
    build_model,
    class_mean_weights,
    encode_text_init,
    image_features,
    linear_probe_weights,
    load_backbone,
    model_from_checkpoint,
    parameter_summary,
    save_checkpoint,
)
from liftplus.model.backbone import TINY_RN_MODEL
from liftplus.model.resnet import RESNET_PEFT, block_counts, resnet_formula, resnet_vision_cfg
from liftplus.training.losses import build_loss
from liftplus.training.step import train_step

NAME = TINY_RN_MODEL
K = 4
CLASSES = ["dog", "sea_lion", "cat", "great white shark"]
EMBED = 64
"""The tiny RN's ``embed_dim``: the attention pool's output width, the feature the head sees."""
BLOCK_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _moved_clip(seed: int) -> torch.nn.Module:
    """The tiny CLIP RN with every parameter and every BatchNorm statistic off its init (open_clip zeroes
    each ``bn3.weight``, which would cut the gradient to the earlier BatchNorms of a block)."""
    torch.manual_seed(seed)
    clip = open_clip.create_model(NAME)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for module in clip.visual.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.add_(1.0)
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.1)
                module.running_var.copy_(1.0 + torch.rand_like(module.running_var))
    return clip.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A local checkpoint of the moved tiny CLIP RN (``torch.save`` of its state dict), as model.pretrained."""
    path = tmp_path_factory.mktemp("rn") / "tiny-rn.pt"
    torch.save(_moved_clip(seed=3).state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def rn_model(weights: str, peft="none", **fields):
    return build_model(ModelConfig(name=NAME, pretrained=weights, peft=peft, num_classes=K, **fields))


def block_params(visual: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in visual.named_parameters() if n.split(".")[0] in BLOCK_STAGES}


def expected_trainable(visual: torch.nn.Module, methods: tuple[str, ...]) -> set[str]:
    """The reference's ``unfreeze_params``/``unfreeze_bias``/``add_ssf`` on ``PEFT_RN``, as state keys."""
    blocks = block_params(visual)
    keys = set()
    if "full" in methods:
        keys |= set(blocks)
    if "bitfit" in methods:
        keys |= {n for n in blocks if n.endswith("bias")}
    if "ssf" in methods:
        keys |= {"tuner.ssf.scale", "tuner.ssf.shift"}
    return {f"backbone.visual.{k}" for k in keys} | {"head.weight"}


def one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    return text


# --- the feature -------------------------------------------------------------------------------


def test_feature_is_open_clips_resnet_forward_and_the_file_is_loaded(weights, images):
    source = _moved_clip(seed=3)
    backbone, pre = load_backbone(NAME, weights)
    assert isinstance(backbone.visual, ModifiedResNet)
    assert (pre.image_size, pre.mean, pre.std) == (32, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    loaded = backbone.state_dict()
    for key, value in source.state_dict().items():  # weights and BatchNorm statistics
        assert torch.equal(loaded[key], value), key
    backbone.eval()
    with torch.no_grad():
        ours = image_features(backbone.visual, images)
        assert ours.shape == (8, EMBED)
        torch.testing.assert_close(ours, source.visual(images), rtol=0, atol=0)
        # the model's feature (no PEFT) is the same, in train mode too: BatchNorm uses its running statistics
        model = rn_model(weights).train()
        torch.testing.assert_close(model.features(images), ours, rtol=0, atol=0)
    assert backbone_fingerprint(NAME, weights) != backbone_fingerprint(NAME, None)


def test_a_mismatching_resnet_file_is_one_line(tmp_path):
    wide = dict(open_clip.get_model_config(NAME))
    wide["vision_cfg"] = {**wide["vision_cfg"], "width": 16}
    (tmp_path / "liftplus-test-wide-rn.json").write_text(json.dumps(wide))
    open_clip.add_model_config(tmp_path / "liftplus-test-wide-rn.json")
    torch.save(open_clip.create_model("liftplus-test-wide-rn").state_dict(), tmp_path / "wide.pt")
    with pytest.raises(CheckpointError) as exc:
        load_backbone(NAME, str(tmp_path / "wide.pt"))
    assert f"{tmp_path / 'wide.pt'}: does not match {NAME}" in one_line(exc)


def test_an_encoder_that_is_neither_a_plain_vit_nor_a_resnet_is_refused_in_one_line(tmp_path):
    config = dict(open_clip.get_model_config("liftplus-tiny-vit"))
    config["vision_cfg"] = {**config["vision_cfg"], "pool_type": "none"}
    (tmp_path / "liftplus-test-no-pool.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "liftplus-test-no-pool.json")
    with pytest.raises(ParamsError) as exc:
        load_backbone("liftplus-test-no-pool")
    assert one_line(exc) == (
        "model.name: 'liftplus-test-no-pool' is not a plain ViT or CLIP ResNet image encoder (LIFT+ needs one)"
    )


def test_clip_resnet_configs_are_recognised_from_their_json():
    for name in ("RN50", "RN101", "RN50x4", NAME):
        assert resnet_vision_cfg(name) is not None, name
    for name in ("ViT-B-16", "liftplus-tiny-vit", "timm/liftplus-tiny-vit"):
        assert resnet_vision_cfg(name) is None, name


# --- PEFT: what is trained ---------------------------------------------------------------------

ALLOWED = [("none",), ("full",), ("bitfit",), ("ssf",), ("bitfit", "ssf"), ("full", "ssf")]


@pytest.mark.parametrize("methods", ALLOWED, ids=["+".join(m) for m in ALLOWED])
def test_each_method_trains_the_reference_set_and_count(weights, methods):
    model = rn_model(weights, peft=methods if len(methods) > 1 else methods[0])
    visual = model.backbone.visual
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected_trainable(visual, methods)
    assert set(model.trainable_state_dict()) == trainable
    # never the stem nor the attention pool; BitFit's biases are the blocks' BatchNorm biases
    assert not any(
        k.startswith(("backbone.visual.conv", "backbone.visual.bn", "backbone.visual.attnpool")) for k in trainable
    )
    assert all(m.bias is None for m in visual.modules() if isinstance(m, torch.nn.Conv2d))
    if methods == ("bitfit",):
        bn_biases = {
            f"backbone.visual.{name}.bias"
            for name, m in visual.named_modules()
            if isinstance(m, torch.nn.BatchNorm2d) and name.split(".")[0] in BLOCK_STAGES
        }
        assert trainable == bn_biases | {"head.weight"}
    # counts: the module's own numel, and the reference's rules from the config (layers 1-1-1-1, width 8)
    blocks = block_params(visual)
    by_module = K * EMBED + (2 * EMBED if "ssf" in methods else 0)
    if "full" in methods:
        by_module += sum(p.numel() for p in blocks.values())
    elif "bitfit" in methods:
        by_module += sum(p.numel() for n, p in blocks.items() if n.endswith("bias"))
    summary = parameter_summary(model)
    assert summary["trainable_total"] == by_module == resnet_formula(methods, [1, 1, 1, 1], 8, EMBED, K, "cosine")
    assert summary["trainable_other"] == 0 and summary["trainable_head"] == K * EMBED
    assert (model.feature_dim, model.num_layers, model.bottleneck, model.peft_blocks()) == (EMBED, 4, None, [])


def test_block_counts_match_open_clips_rn50_and_rn101_blocks():
    """The closed form peft-summary uses, against the real architectures built on the meta device."""
    for name in ("RN50", "RN101"):
        vision = resnet_vision_cfg(name)
        with torch.device("meta"):
            visual = ModifiedResNet(vision["layers"], 1024, 32, 224, vision["width"])
        blocks = block_params(visual)
        counts = block_counts(vision["layers"], vision["width"])
        assert counts["all"] == sum(p.numel() for p in blocks.values())
        assert counts["bias"] == sum(p.numel() for n, p in blocks.items() if n.endswith("bias"))
    assert block_counts([3, 4, 6, 3], 64) == {"all": 23_498_496, "bias": 26_496}


@pytest.mark.parametrize("peft", ["full", "bitfit", "ssf", "bitfit+ssf"])
def test_peft_summary_agrees_with_the_reference_formula(peft, weights):
    app = typer.Typer()
    app.command()(peft_summary)
    result = CliRunner().invoke(app, ["--model", NAME, "--json", "-k", "10", "--peft", peft])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    methods = tuple(peft.split("+"))
    model = build_model(ModelConfig(name=NAME, peft=methods if len(methods) > 1 else peft, num_classes=10))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary["trainable_total"] == summary["formula"] == trainable
    assert summary["formula"] == resnet_formula(methods, [1, 1, 1, 1], 8, EMBED, 10)
    assert summary["tuned_layers"] == ([] if methods == ("ssf",) else [0, 1, 2, 3])


REFUSED = [m for m in PEFT_METHODS if m not in RESNET_PEFT]


@pytest.mark.parametrize("method", REFUSED)
def test_methods_without_a_resnet_form_are_refused_in_one_line(method, monkeypatch):
    monkeypatch.setattr("liftplus.model.build.load_backbone", lambda *a: pytest.fail("built before refusing"))
    with pytest.raises(ParamsError) as exc:
        build_model(ModelConfig(name=NAME, peft=("bitfit", method), num_classes=K))
    assert one_line(exc) == (
        f"model.peft: {method} does not apply to {NAME}, a CLIP ResNet (the reference tunes one with full, "
        "bitfit or ssf): use full, bitfit, ssf, none"
    )


def test_peft_layers_and_image_projection_options_are_refused_in_one_line():
    with pytest.raises(ParamsError) as exc:
        build_model(ModelConfig(name=NAME, peft="bitfit", peft_layers=2, num_classes=K))
    assert one_line(exc) == (
        f"model.peft_layers: {NAME} is a CLIP ResNet, whose PEFT tunes every block "
        "(the reference ignores *_layers there): leave it null"
    )
    for option in ("clip_adapter", "proj_tuning"):
        with pytest.raises(ParamsError) as exc:
            build_model(ModelConfig(name=NAME, peft="none", classifier="text", num_classes=K, **{option: True}))
        assert one_line(exc) == (
            f"model.{option}: {NAME} is a CLIP ResNet, with no image projection to adapt or tune "
            "(its attention pool projects): leave it off"
        )


# --- training: only the tuned tensors move, BatchNorm statistics do not -------------------------


@pytest.mark.parametrize("methods", [("bitfit", "ssf"), ("full",)], ids=["bitfit+ssf", "full"])
def test_a_short_fit_moves_only_the_tuned_tensors_and_keeps_batchnorm_statistics(weights, images, methods):
    model = rn_model(weights, peft=methods if len(methods) > 1 else methods[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    loss_fn = build_loss("la", [40, 20, 10, 5], tau=1.0)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    model.train()
    batchnorms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms) and model.head.training
    for _ in range(3):
        train_step(model, loss_fn, images, labels, optimizer)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == expected_trainable(model.backbone.visual, methods)
    statistics = [k for k in before if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(statistics) == 3 * len(batchnorms)
    assert not changed & set(statistics)


# --- heads: semantic init, zero-shot and text logits without an image projection --------------


def _projected_text(backbone: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """The reference's ``PEFT_Text`` feature (eot token after ``ln_final``) @ ``text_projection``."""
    tokens = open_clip.get_tokenizer(NAME)(prompts)
    x = backbone.token_embedding(tokens) + backbone.positional_embedding
    x = backbone.ln_final(backbone.transformer(x, attn_mask=backbone.attn_mask))
    return x[torch.arange(len(prompts)), tokens.argmax(dim=-1)] @ backbone.text_projection


def test_semantic_init_is_the_normalised_projected_text_feature(weights):
    model = rn_model(weights)
    weights_, text_features = encode_text_init(model, CLASSES)
    with torch.no_grad():
        expected = F.normalize(
            _projected_text(model.backbone, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
        )
    assert weights_.shape == (K, EMBED) == tuple(model.head.weight.shape)
    torch.testing.assert_close(weights_, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(text_features, expected, rtol=0, atol=1e-6)
    model.init_head(weights_)
    torch.testing.assert_close(model.head.weight, expected, rtol=0, atol=1e-6)


def test_zero_shot_and_text_heads_match_open_clips_logits(weights, images):
    source = _moved_clip(seed=3)
    tokens = open_clip.get_tokenizer(NAME)([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    with torch.no_grad():
        image, text, scale = source(images, tokens)  # open_clip's CLIP.forward: normalised features
        expected = scale * image @ text.T
        zero_shot = rn_model(weights, classifier="zero-shot").eval()
        zero_shot.init_head(encode_text_init(zero_shot, CLASSES)[1])
        torch.testing.assert_close(zero_shot(images), expected, rtol=0, atol=1e-4)
        text_head = rn_model(weights, classifier="text", coop_ctx_len=0).eval()
        text_head.head.set_classnames(CLASSES)
        torch.testing.assert_close(text_head(images), expected, rtol=0, atol=1e-4)
    assert tuple(zero_shot.head.weight.shape) == (K, EMBED)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_image_feature_inits_use_the_attention_pool_feature(weights, images):
    model = rn_model(weights).eval()
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    with torch.no_grad():
        features = model.features(images)
        pooled = _moved_clip(seed=3).visual(images)
    means = torch.stack([pooled[labels == k].mean(0) for k in range(K)])
    torch.testing.assert_close(class_mean_weights(features, labels, K), F.normalize(means), rtol=0, atol=1e-6)
    probe = linear_probe_weights(features, labels, K)
    assert probe.shape == (K, EMBED)
    torch.testing.assert_close(probe.norm(dim=-1), torch.ones(K))


# --- checkpoints -------------------------------------------------------------------------------


def test_checkpoint_round_trip_and_mismatches_are_one_line(weights, images, tmp_path):
    model = rn_model(weights, peft=("bitfit", "ssf")).eval()
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn_like(p) * 0.05)
        expected = model(images)
    save_checkpoint(tmp_path / "rn.pt", model, extra={"classnames": CLASSES})
    loaded, config, _ = model_from_checkpoint(tmp_path / "rn.pt")
    assert config.methods == ("bitfit", "ssf") and config.pretrained == weights
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), expected, rtol=0, atol=0)

    ckpt = torch.load(tmp_path / "rn.pt", weights_only=True)

    def refused(edit) -> str:
        changed = {**ckpt, "config": dict(ckpt["config"]), "state": dict(ckpt["state"])}
        edit(changed)
        torch.save(changed, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError) as exc:
            model_from_checkpoint(tmp_path / "bad.pt")
        return one_line(exc)

    bias = "backbone.visual.layer1.0.bn1.bias"
    text = refused(lambda c: c["config"].update(peft="ssf"))
    assert f"key '{bias}' is not trained by {NAME} + ssf with 4 classes" in text
    text = refused(lambda c: c["config"].update(peft=["full", "ssf"]))
    assert f"missing key 'backbone.visual.layer1.0.conv1.weight' ({NAME} + full+ssf" in text
    text = refused(lambda c: c["state"].update({"backbone.visual.tuner.ssf.scale": torch.ones(EMBED + 1)}))
    assert f"key 'backbone.visual.tuner.ssf.scale' has shape ({EMBED + 1},), expected ({EMBED},)" in text
    text = refused(lambda c: c["config"].update(peft="adaptformer"))
    assert "config 'peft': adaptformer does not apply to" in text
    text = refused(lambda c: c["config"].update(num_classes=5))
    assert f"key 'head.weight' has shape ({K}, {EMBED}), expected (5, {EMBED})" in text


# --- the stages ------------------------------------------------------------------------------


def test_resnet_stages_shard_init_train_and_evaluate_and_refuse_a_vit_method(tmp_path, weights):
    """shard -> init_head -> train (bitfit + ssf, semantic head) -> evaluate through the stages' entry
    points, on the tiny RN loaded from a local file; adaptformer on it fails train in one line, no output."""
    from faultkit import assert_one_line_error, invoke, write_params
    from shard_tars import write_image_folder

    write_image_folder(tmp_path / "raw", ("ant", "bee", "sea_lion"), {"train": 6, "test": 2})
    data = {"source": "imagefolder", "root": str(tmp_path / "raw"), "imbalance_ratio": 1}
    train = {"epochs": 1, "batch_size": 6, "micro_batch": 6, "workers": 0, "validation": "none"}
    params = write_params(
        tmp_path / "params.yaml",
        data=data,
        model={"name": NAME, "pretrained": weights, "peft": ["bitfit", "ssf"]},
        train=train,
        evaluate={"tte": False, "workers": 0},
    )
    shards, head, out = tmp_path / "shards", tmp_path / "head" / "text_init.pt", tmp_path / "model"
    assert invoke("shard", "--params", params, "--out", shards).code == 0
    done = invoke("init_head", "--params", params, "--shards", shards, "--out", head)
    assert done.code == 0, done.stderr[-2000:]
    init = torch.load(head, weights_only=True)
    clip = _moved_clip(seed=3)
    with torch.no_grad():
        text = clip.encode_text(
            open_clip.get_tokenizer(NAME)([f"a photo of a {n.replace('_', ' ')}." for n in ("ant", "bee", "sea_lion")])
        )
    assert torch.allclose(init["weight"], F.normalize(text, dim=-1), atol=1e-5), "semantic init without image_proj"

    train_args = ("--shards", shards, "--head", head, "--out", out / "adapter.pt", "--state", out / "last.pt")
    done = invoke("train", "--params", params, *train_args, "--live", out / "live")
    assert done.code == 0, done.stderr[-2000:]
    ckpt = torch.load(out / "adapter.pt", weights_only=True)
    assert ckpt["config"]["name"] == NAME and "backbone.visual.tuner.ssf.scale" in ckpt["state"]
    done = invoke(
        "evaluate", "--params", params, "--shards", shards, "--model", out / "adapter.pt", "--out", tmp_path / "metrics"
    )
    assert done.code == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert metrics["test"]["images"] == 6 and 0 <= metrics["test"]["acc"] <= 100

    vit_method = write_params(
        tmp_path / "vit.yaml",
        data=data,
        model={"name": NAME, "pretrained": weights, "peft": "adaptformer"},
        train=train,
    )
    refused = tmp_path / "refused"
    outcome = invoke(
        "train",
        "--params",
        vit_method,
        *train_args[:4],
        "--out",
        refused / "adapter.pt",
        "--state",
        refused / "last.pt",
        "--live",
        refused / "live",
    )
    assert_one_line_error(outcome, "model.peft: adaptformer does not apply to liftplus-tiny-rn, a CLIP ResNet")
    assert not (refused / "adapter.pt").exists() and not (refused / "last.pt").exists()
