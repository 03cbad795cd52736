"""timm ViT backbones (the reference's IN21K ViTs): exact conversion, names and checkpoints, every PEFT
method, the head-init rules, and a real train stage run whose checkpoint round-trips."""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from faultkit import assert_one_line_error, invoke, write_params
from safetensors.torch import save_file
from shard_tars import class_image
from timm.models.vision_transformer import VisionTransformer as TimmViT

from liftplus.data.loader import ShardIndex
from liftplus.data.transforms import test_transform as plain_transform
from liftplus.errors import CheckpointError, ParamsError
from liftplus.model import (
    PEFT_METHODS,
    TINY_MODEL,
    ModelConfig,
    backbone_fingerprint,
    build_model,
    encode_text_init,
    image_features,
    load_backbone,
    model_from_checkpoint,
    save_checkpoint,
)
from liftplus.model.backbone import has_text_tower
from liftplus.model.peft import insert_peft
from liftplus.model.timm_vit import TINY_TIMM_MODEL, local_config, to_open_clip
from liftplus.params import ModelParams, load_params, parse_params, resolved_train
from liftplus.training.run import initialise_head

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2, num_classes=0)


def timm_vit(seed: int = 0, noise: float = 0.1, **overrides) -> TimmViT:
    """A small timm ViT with every tensor (LayerNorms and biases too) moved off timm's init."""
    torch.manual_seed(seed)
    vit = TimmViT(**{**SMALL, **overrides}).eval()
    with torch.no_grad():
        for p in vit.parameters():
            p.add_(torch.randn_like(p) * noise)
    return vit


def tiny_timm(seed: int = 0, **head) -> TimmViT:
    """The registered tiny config as a plain timm model, with a timm classifier ``head`` if given."""
    args = {k: v for k, v in local_config("liftplus-tiny-vit").items() if k not in ("mean", "std")}
    torch.manual_seed(seed)
    return TimmViT(**args, **{"num_classes": 0, **head}).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def assert_one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and len(text) < 400, text
    for needle in needles:
        assert needle in text, text


# --- the conversion is exact -------------------------------------------------------------------


@pytest.mark.parametrize("variant", [{}, {"init_values": 0.1}, {"qkv_bias": False}], ids=["plain", "ls", "no-qkv-b"])
def test_converted_features_are_timms_class_token_after_norm(variant, images):
    vit = timm_vit(**variant)
    visual = to_open_clip(vit).eval()
    with torch.no_grad():
        expected = vit.forward_features(images)[:, 0]
        ours = image_features(visual, images)
        assert ours.shape == (3, 64)
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        # the PEFT wrapper (fused attention and the stock one) computes the same feature before tuning
        for sdpa in (True, False):
            insert_peft(visual.transformer.resblocks, "none", num_classes=4, sdpa=sdpa)
            torch.testing.assert_close(image_features(visual, images), expected, rtol=0, atol=1e-5)
    assert visual.conv1.bias is not None and visual.proj is None
    assert isinstance(visual.ln_pre, torch.nn.Identity)
    assert visual.ln_post.eps == vit.norm.eps == 1e-6


def test_a_vit_the_conversion_cannot_reproduce_is_refused():
    with pytest.raises(ParamsError) as exc:
        to_open_clip(TimmViT(**SMALL, reg_tokens=1), "timm/with-registers")
    assert_one_line(exc, "model.name", "timm/with-registers", "register tokens")
    with pytest.raises(ParamsError) as exc:
        to_open_clip(TimmViT(**{**SMALL, "global_pool": "avg"}), "timm/gap")
    assert_one_line(exc, "class-token pooling")


# --- names, the tiny config, checkpoint files ----------------------------------------------------


def test_tiny_config_is_timms_vit_with_the_reference_preprocessing(images):
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    backbone, pre = load_backbone(TINY_TIMM_MODEL, None, seed=3)
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG is left alone
    assert (pre.image_size, pre.mean, pre.std, pre.interpolation) == (32, (0.5,) * 3, (0.5,) * 3, "bicubic")
    blocks = backbone.visual.transformer.resblocks
    assert (len(blocks), blocks[0].attn.num_heads, blocks[0].mlp.c_fc.out_features) == (4, 4, 256)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert not has_text_tower(backbone) and has_text_tower(load_backbone(TINY_MODEL)[0])
    reference = tiny_timm(seed=3)
    with torch.no_grad():
        torch.testing.assert_close(
            image_features(backbone.visual, images), reference.forward_features(images)[:, 0], rtol=0, atol=1e-5
        )
    other, _ = load_backbone(TINY_TIMM_MODEL, None, seed=4)
    assert not torch.equal(other.visual.conv1.weight, backbone.visual.conv1.weight)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_timm_state_dict_file_loads_its_weights_and_is_fingerprinted_by_content(suffix, tmp_path, images):
    source = tiny_timm(seed=7, num_classes=10)  # a timm classifier head, as in a real checkpoint: ignored
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    assert "head.weight" in state
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)

    backbone, _ = load_backbone(TINY_TIMM_MODEL, str(path))
    with torch.no_grad():
        expected = source.forward_features(images)[:, 0]
        torch.testing.assert_close(image_features(backbone.visual, images), expected, rtol=0, atol=1e-5)

    copy = tmp_path / "moved" / path.name
    copy.parent.mkdir()
    shutil.copy(path, copy)
    fingerprint = backbone_fingerprint(TINY_TIMM_MODEL, str(path))
    assert backbone_fingerprint(TINY_TIMM_MODEL, str(copy)) == fingerprint
    assert fingerprint != backbone_fingerprint(TINY_TIMM_MODEL, None)
    torch.save({k: v + 1 for k, v in state.items()}, copy.with_suffix(".pth"))
    assert backbone_fingerprint(TINY_TIMM_MODEL, str(copy.with_suffix(".pth"))) != fingerprint
    assert backbone_fingerprint(TINY_TIMM_MODEL, None, seed=1) != backbone_fingerprint(TINY_TIMM_MODEL, None)
    assert backbone_fingerprint(TINY_TIMM_MODEL, None) != backbone_fingerprint(TINY_MODEL, None)


def test_half_precision_weights_load_as_float32(tmp_path):
    source = tiny_timm(seed=2)
    torch.save({k: v.half() for k, v in source.state_dict().items()}, tmp_path / "half.pth")
    backbone, _ = load_backbone(TINY_TIMM_MODEL, str(tmp_path / "half.pth"))
    assert {p.dtype for p in backbone.parameters()} == {torch.float32}
    assert torch.equal(backbone.visual.conv1.weight, source.patch_embed.proj.weight.half().float())


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, tuple[str, ...]]]:
    good = tiny_timm().state_dict()
    narrow = TimmViT(**{**SMALL, "depth": 4, "embed_dim": 32}).state_dict()
    missing = {k: v for k, v in good.items() if k != "blocks.3.mlp.fc2.bias"}
    files = {
        "shapes": (narrow, ("does not match", "size mismatch")),
        "missing": (missing, ("does not match", "blocks.3.mlp.fc2.bias")),
    }
    out = {}
    for name, (state, needles) in files.items():
        torch.save(state, tmp_path / f"{name}.pth")
        out[name] = (tmp_path / f"{name}.pth", needles)
    torch.save(good, tmp_path / "whole.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((tmp_path / "whole.pth").read_bytes()[:3000])
    out["truncated"] = (truncated, ("corrupt",))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    out["safetensors"] = (broken, ("corrupt safetensors",))
    return out


@pytest.mark.parametrize("case", ["shapes", "missing", "truncated", "safetensors"])
def test_a_wrong_or_corrupt_checkpoint_is_one_line(case, tmp_path):
    path, needles = _bad_files(tmp_path)[case]
    with pytest.raises(CheckpointError) as exc:
        load_backbone(TINY_TIMM_MODEL, str(path))
    assert_one_line(exc, str(path), *needles)


@pytest.mark.parametrize(
    ("name", "pretrained", "error", "needles"),
    [
        ("timm/no_such_vit", None, ParamsError, ("model.name", "not a timm model")),
        ("timm/vit_base_patch16_224.augreg_in21k", None, ParamsError, ("model.pretrained", "tag")),
        ("timm/resnet18", None, ParamsError, ("not a timm VisionTransformer",)),
        (TINY_TIMM_MODEL, "augreg_in21k", CheckpointError, ("model.pretrained", "neither", "tags: none")),
        (TINY_TIMM_MODEL, "/no/such/file.pth", CheckpointError, ("not found",)),
        ("timm/vit_tiny_patch16_224", "no_such_tag", CheckpointError, ("its tags:", "augreg_in21k")),
    ],
)
def test_bad_names_and_tags_are_one_line(name, pretrained, error, needles):
    with pytest.raises(error) as exc:
        load_backbone(name, pretrained)
    assert_one_line(exc, *needles)


def test_a_timm_pretrained_tag_fails_offline_in_one_line(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    name = "timm/vit_tiny_patch16_224"
    start = time.monotonic()
    with pytest.raises(CheckpointError) as exc:
        load_backbone(name, "augreg_in21k")
    assert_one_line(exc, "model.pretrained", "vit_tiny_patch16_224.augreg_in21k", "local file")
    assert time.monotonic() - start < 30
    # the fingerprint of a tag names its weights without fetching them
    tag = backbone_fingerprint(name, "augreg_in21k")
    assert tag == backbone_fingerprint(name, "augreg_in21k") != backbone_fingerprint(name, "augreg_in21k_ft_in1k")


# --- PEFT: the same tuners, the same formulas ----------------------------------------------------

K = 40


@pytest.mark.parametrize("method", [m for m in PEFT_METHODS if m != "none"])
def test_every_peft_method_tunes_the_timm_vit_as_the_same_shaped_clip_vit(method, images, perturb):
    """The tiny timm config has the tiny CLIP's image tower shape (64 wide, 4 blocks, 4 heads, MLP 256),
    so each method must train tensors of the same names and shapes with the same bottleneck."""
    timm_model = build_model(ModelConfig(name=TINY_TIMM_MODEL, peft=method, num_classes=K)).eval()
    clip_model = build_model(ModelConfig(name=TINY_MODEL, peft=method, num_classes=K)).eval()
    shapes = {k: tuple(v.shape) for k, v in timm_model.trainable_state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in clip_model.trainable_state_dict().items()}
    assert timm_model.bottleneck == clip_model.bottleneck
    assert (timm_model.feature_dim, timm_model.num_layers, len(timm_model.peft_blocks())) == (64, 4, 4)

    frozen, _ = load_backbone(TINY_TIMM_MODEL)
    with torch.no_grad():
        base = image_features(frozen.visual, images)
        start = timm_model.features(images)
    if method not in ("ssf", "vpt-shallow", "vpt-deep"):  # those start off the identity, as the reference's
        torch.testing.assert_close(start, base, rtol=0, atol=1e-5)
    perturb(timm_model)
    with torch.no_grad():
        assert (timm_model.features(images) - start).abs().max() > 1e-3


def test_adaptformer_and_aft_sizes_follow_the_reference_rules():
    d, L = 64, 4
    model = build_model(ModelConfig(name=TINY_TIMM_MODEL, peft="adaptformer", num_classes=K))
    r = 2 ** max(0, math.floor(math.log2(K / (2 * L))))
    assert model.bottleneck == r == 4
    tuners = sum(p.numel() for block in model.peft_blocks() for p in block.tuner.parameters())
    assert tuners == L * (2 * d * r + r + 3 * d + 1) == 2836

    model = build_model(ModelConfig(name=TINY_TIMM_MODEL, peft="aft", num_classes=K))
    ratio = K / (L * (d * 12 + 9))
    qkv = model.peft_blocks()[0].tuner["aft_attn_in"].weight
    assert qkv.numel() == int(3 * d * d * ratio)


# --- head init: no text tower ------------------------------------------------------------------


def test_head_init_defaults_to_class_mean_and_semantic_is_refused_in_one_line():
    assert ModelParams().head_init == "semantic"
    assert ModelParams(name=TINY_TIMM_MODEL).head_init == "class_mean"
    assert ModelParams(name=TINY_TIMM_MODEL, head_init="random").head_init == "random"
    with pytest.raises(ParamsError) as exc:
        parse_params({"model": {"name": TINY_TIMM_MODEL, "head_init": "semantic"}})
    assert_one_line(exc, "model.head_init", "text tower", "class_mean")


def test_text_classifiers_and_text_encoding_are_refused_without_a_text_tower():
    with pytest.raises(ParamsError) as exc:
        build_model(ModelConfig(name=TINY_TIMM_MODEL, peft="none", classifier="zero-shot", num_classes=4))
    assert_one_line(exc, "train.method", "zero-shot", "text tower", TINY_TIMM_MODEL)
    model = build_model(ModelConfig(name=TINY_TIMM_MODEL, num_classes=4))
    with pytest.raises(ParamsError) as exc:
        encode_text_init(model, ["cat", "dog", "car", "bird"])
    assert_one_line(exc, "model.name", "no text tower")


# --- the stages: init_head, train, checkpoint --------------------------------------------------

CLASSES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """An image folder of 4 classes, sharded; a timm checkpoint file; params naming both."""
    root = tmp_path_factory.mktemp("timm-stage")
    for offset, (split, count) in enumerate((("train", 6), ("test", 2))):
        for label, name in enumerate(CLASSES):
            folder = root / "raw" / split / name
            folder.mkdir(parents=True)
            for n in range(count):
                (folder / f"{n}.png").write_bytes(class_image(label, 100 * offset + n))
    weights = root / "tiny-timm.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_timm(seed=11, num_classes=21).state_dict().items()}, weights)
    params = write_params(
        root / "params.yaml",
        data={"source": "imagefolder", "root": str(root / "raw"), "imbalance_ratio": 1},
        model={"name": TINY_TIMM_MODEL, "pretrained": str(weights), "head_init": None},
        train={"epochs": 1, "batch_size": 8, "micro_batch": 8, "workers": 0, "validation": "none"},
    )
    done = invoke("shard", "--params", params, "--out", root / "shards")
    assert done.code == 0, done.stderr
    return {"root": root, "params": params, "weights": weights}


def test_the_default_head_init_of_a_timm_vit_is_the_class_mean_of_its_features(project):
    """prepare_training's initialise_head with ``head_init: null``: the class means, the text init unread."""
    params = load_params(project["params"])
    assert params.model.head_init == "class_mean"
    shards = sorted((project["root"] / "shards").glob("train-*.tar"))
    model = build_model(ModelConfig.for_method(params.model, "lift+", 4))
    train = resolved_train(params.train)
    missing = project["root"] / "no-head.pt"
    source = initialise_head(model, params, train, sorted(CLASSES), shards, missing, torch.device("cpu"), "float")
    assert source == "class_mean"
    plain = plain_transform(32, (0.5,) * 3, (0.5,) * 3, expand=0)  # the reference's transform_plain
    dataset = ShardIndex(shards, plain, num_classes=4)
    items = [dataset[0, i] for i in range(len(dataset))]  # 6 a class: all of them (up to 100 are used)
    with torch.no_grad():
        features = model.features(torch.stack([image for image, _ in items]))
    labels = torch.tensor([label for _, label in items])
    means = torch.stack([features[labels == k].mean(0) for k in range(4)])
    torch.testing.assert_close(model.head.weight, torch.nn.functional.normalize(means, dim=-1), rtol=0, atol=1e-5)


def test_init_head_writes_an_empty_init_and_train_runs_and_round_trips(project):
    root = project["root"]
    done = invoke("init_head", "--params", project["params"], "--shards", root / "shards", "--out", root / "head.pt")
    assert done.code == 0, done.stderr
    head = torch.load(root / "head.pt", weights_only=True)
    assert head["weight"].shape == (4, 0) and head["classnames"] == sorted(CLASSES)

    out = root / "run"
    done = invoke(
        "train",
        *("--params", project["params"], "--shards", root / "shards", "--head", root / "head.pt"),
        *("--out", out / "adapter.pt", "--state", out / "last.pt", "--live", out / "live"),
    )
    assert done.code == 0, done.stderr[-2000:]
    ckpt = torch.load(out / "adapter.pt", weights_only=True)
    assert ckpt["config"]["name"] == TINY_TIMM_MODEL and ckpt["config"]["pretrained"] == str(project["weights"])
    state = ckpt["state"]
    assert state["head.weight"].shape == (4, 64)
    assert state["backbone.visual.transformer.resblocks.0.tuner.adaptformer.up.weight"].abs().max() > 0  # trained

    model, config, _ = model_from_checkpoint(out / "adapter.pt")
    assert config.name == TINY_TIMM_MODEL
    for key, value in model.trainable_state_dict().items():
        assert torch.equal(value, state[key]), key
    save_checkpoint(root / "again.pt", model)
    assert torch.load(root / "again.pt", weights_only=True)["backbone_fingerprint"] == ckpt["backbone_fingerprint"]

    # the backbone file changed: the adapter is refused, not loaded onto other weights
    moved = root / "run" / "changed.pt"
    ckpt["config"]["pretrained"] = str(root / "other.pth")
    torch.save({k: v * 2 for k, v in tiny_timm(seed=11).state_dict().items()}, root / "other.pth")
    torch.save(ckpt, moved)
    with pytest.raises(CheckpointError) as exc:
        model_from_checkpoint(moved)
    assert_one_line(exc, "different backbone")


def test_init_head_with_semantic_on_a_timm_vit_is_one_line(project):
    params = write_params(project["root"] / "semantic.yaml", project["params"], model={"head_init": "semantic"})
    done = invoke("init_head", "--params", params, "--shards", project["root"] / "shards", "--out", "unused.pt")
    assert_one_line_error(done, "model.head_init", "class_mean")
