"""The text classifier (train.method coop): CoOp context, CLIP-Adapter, projection tuning.

Every expected number comes from the reference's formulas (LIFT-plus trainer.py ``build_tuner``,
models/models.py ``PEFT_Text``/``PEFT_Model.forward``, models/modules.py ``Adapter``), computed
here by hand on the tiny random CLIP.
"""

import json
import math
import re

import open_clip
import pytest
import torch
import torch.nn.functional as F
import typer
from shard_tars import write_shards
from typer.testing import CliRunner

from liftplus.commands.peft_summary import peft_summary
from liftplus.data.loader import ShardIndex
from liftplus.data.transforms import train_transform
from liftplus.errors import DataError, ParamsError
from liftplus.model import TINY_MODEL, ModelConfig, build_model, model_from_checkpoint, save_checkpoint
from liftplus.model.heads import ZeroShotHead
from liftplus.model.text import encode_text_init
from liftplus.model.text_head import TextHead, context_indices, coop_template
from liftplus.params import METHOD_DEFAULTS, ModelParams, TrainParams, parse_params, resolved_train
from liftplus.training.loop import RunConfig, fit
from liftplus.training.losses import build_loss
from liftplus.training.run import initialise_head
from liftplus.training.step import train_step

CLASSES = ["dog", "sea_lion", "cat", "great white shark"]
DIMS = "liftplus-test-text-dims"
"""A tiny CLIP whose image width (48), text width (32) and embedding (24) all differ: a transposed
projection or an adapter on the wrong side cannot go unnoticed."""
X, DOT, SOT, EOT = 343, 269, 49406, 49407
"""Token ids of "x", "." and the start and end tokens in CLIP's vocabulary."""
A, PHOTO, OF = 320, 1125, 539


@pytest.fixture(scope="module", autouse=True)
def _dims_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / f"{DIMS}.json"
    config = {
        "embed_dim": 24,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 48, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    path.write_text(json.dumps(config))
    open_clip.add_model_config(path)


def text_model(name=TINY_MODEL, num_classes=len(CLASSES), classnames=CLASSES, **fields):
    model = build_model(ModelConfig(name=name, num_classes=num_classes, peft="none", classifier="text", **fields))
    if classnames is not None:
        model.head.set_classnames(classnames)
    return model


def tokens_of(prompts):
    return open_clip.get_tokenizer(TINY_MODEL)(prompts)


# --- templates and context locations -------------------------------------------------------------


@pytest.mark.parametrize(
    "ctx_len, cls_pos, init, template, loc",
    [
        (4, "end", None, "X X X X {}.", [0, 1, 2, 3]),
        (4, "middle", None, "X X {} X X.", [0, 1, -3, -2]),
        (5, "middle", None, "X X {} X X X.", [0, 1, -4, -3, -2]),
        (4, "front", None, "{} X X X X.", [-5, -4, -3, -2]),
        (1, "front", None, "{} X.", [-2]),
        (16, "end", None, "X " * 16 + "{}.", list(range(16))),
        (4, "front", "photo", "a photo of a {}.", [0, 1, 2, 3, -1]),
        (0, "end", None, "a photo of a {}.", []),
    ],
)
def test_templates_and_context_locations_are_the_references(ctx_len, cls_pos, init, template, loc):
    assert coop_template(ctx_len, cls_pos, init) == (template, loc)


@pytest.mark.parametrize("cls_pos", ["end", "middle", "front"])
@pytest.mark.parametrize("ctx_len", [1, 4, 5])
def test_context_locations_land_on_the_x_tokens_for_any_class_name_length(cls_pos, ctx_len):
    template, loc = coop_template(ctx_len, cls_pos)
    tokens = tokens_of([template.format(name) for name in ("dog", "sea lion", "great white shark")])
    where = context_indices(tokens, torch.tensor(loc))
    assert (tokens.gather(1, where) == X).all()
    assert ((tokens == X).sum(dim=1) == ctx_len).all()  # and they are all the X there are


def test_context_indices_are_the_reference_arithmetic():
    # "X X sea lion X X.": sot x x sea lion x x . eot -> eot at 8, 7 tokens between sot and eot
    tokens = tokens_of(["X X sea lion X X.", "X X dog X X."])
    assert tokens[0, :10].tolist() == [SOT, X, X, 2102, 5567, X, X, DOT, EOT, 0]
    loc = torch.tensor([0, 1, -3, -2])
    # relative_loc % txt_len + 1: [0 % 7 + 1, 1 % 7 + 1, -3 % 7 + 1, -2 % 7 + 1] and with txt_len 6
    assert context_indices(tokens, loc).tolist() == [[1, 2, 5, 6], [1, 2, 4, 5]]
    photo = tokens_of(["a photo of a {}."])  # the template itself, as the photo init reads it
    assert photo[0, :9].tolist() == [SOT, A, PHOTO, OF, A, 90, 92, DOT, EOT]
    assert context_indices(photo, torch.tensor([0, 1, 2, 3, -1])).tolist() == [[1, 2, 3, 4, 7]]


# --- initialisation --------------------------------------------------------------------------------


def test_random_context_is_normal_002_from_the_model_seed():
    for seed in (0, 3):
        model = text_model(seed=seed, coop_ctx_len=6)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = torch.empty(6, 64).normal_(std=0.02)
        assert torch.equal(model.head.ctx, expected)
    # the draw does not depend on what else the build draws (a PEFT method inserted before the head)
    with_peft = build_model(ModelConfig(num_classes=4, peft="adaptformer", classifier="text", seed=3, coop_ctx_len=6))
    assert torch.equal(with_peft.head.ctx, expected)
    assert model.head.ctx.std().item() == pytest.approx(0.02, rel=0.3)


def test_photo_init_copies_the_embeddings_of_a_photo_of_a_and_the_full_stop():
    model = text_model(coop_init="photo")
    embedding = model.backbone.token_embedding.weight
    assert torch.equal(model.head.ctx, embedding[[A, PHOTO, OF, A, DOT]])
    assert model.head.template == "a photo of a {}."


def test_clip_adapters_start_as_the_reference_adapter():
    model = text_model(name=DIMS, clip_adapter=True, clip_adapter_dim=3)
    for adapter in (model.head.image_adapter, model.head.text_adapter):
        assert adapter.norm.normalized_shape == (24,)  # embed_dim: after the projections
        assert tuple(adapter.down.weight.shape) == (3, 24) and tuple(adapter.up.weight.shape) == (24, 3)
        bound = 1 / math.sqrt(24)  # kaiming_uniform(a=sqrt(5)) on fan_in 24
        assert adapter.down.weight.abs().max() <= bound and adapter.down.weight.abs().max() > 0.5 * bound
        assert not adapter.down.bias.any() and not adapter.up.weight.any() and not adapter.up.bias.any()


# --- logits ----------------------------------------------------------------------------------------


def hand_text_features(model, ctx, positions, tokens):
    """The reference's PEFT_Text.forward by hand: the context written over the token embeddings at
    ``positions`` (python lists), then open_clip's frozen text transformer, ln_final, the end
    token's feature, the text projection."""
    bb = model.backbone
    x = bb.token_embedding.weight[tokens].clone()
    for k, where in enumerate(positions):
        for j, position in enumerate(where):
            x[k, position] = ctx[j]
    x = x + bb.positional_embedding
    x = bb.ln_final(bb.transformer(x, attn_mask=bb.attn_mask))
    return x[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ bb.text_projection


def hand_adapter(x, adapter):
    """models/modules.py Adapter: up(relu(down(LayerNorm(x))))."""
    h = F.layer_norm(x, (x.shape[-1],), adapter.norm.weight, adapter.norm.bias, eps=1e-5)
    return F.relu(h @ adapter.down.weight.T + adapter.down.bias) @ adapter.up.weight.T + adapter.up.bias


def reference_positions(tokens, loc):
    """relative_loc % txt_len + 1 in plain python, per prompt."""
    ends = [row.index(EOT) for row in tokens.tolist()]
    return [[r % (end - 1) + 1 for r in loc] for end in ends]


@pytest.mark.parametrize("cls_pos", ["end", "middle", "front"])
def test_text_tower_with_the_templates_own_tokens_as_context_is_open_clips_encode_text(cls_pos):
    model = text_model(name=DIMS, coop_cls_pos=cls_pos)
    head = model.head
    with torch.no_grad():
        head.ctx.copy_(model.backbone.token_embedding.weight[[X] * 4])
        ours = head.encode_text(head.tokens, context_indices(head.tokens, head.ctx_loc))
        theirs = model.backbone.encode_text(head.tokens)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_photo_init_reproduces_the_zero_shot_prompt_features():
    model = text_model(name=DIMS, coop_init="photo")
    tokens = tokens_of([f"a photo of a {name.replace('_', ' ')}." for name in CLASSES])
    assert torch.equal(model.head.tokens, tokens)
    with torch.no_grad():
        ours = model.head.encode_text(model.head.tokens, context_indices(model.head.tokens, model.head.ctx_loc))
        torch.testing.assert_close(ours, model.backbone.encode_text(tokens), rtol=0, atol=1e-5)


@pytest.mark.parametrize("cls_pos", ["end", "middle", "front"])
def test_logits_are_exp_logit_scale_times_cosine_with_adapters(cls_pos, images, perturb):
    model = text_model(name=DIMS, coop_cls_pos=cls_pos, coop_ctx_len=3, clip_adapter=True, proj_tuning=True)
    perturb(model, std=0.2)  # context, adapters (their zero up-projections too) and both projections move
    head, bb = model.head, model.backbone
    _, loc = coop_template(3, cls_pos)
    with torch.no_grad():
        logits = model(images)
        image = model.features(images) @ bb.visual.proj
        image = image + hand_adapter(image, head.image_adapter)
        text = hand_text_features(model, head.ctx, reference_positions(head.tokens, loc), head.tokens)
        text = text + hand_adapter(text, head.text_adapter)
        cosine = (image / image.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
        expected = bb.logit_scale.exp() * cosine
    assert logits.shape == (4, len(CLASSES))
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)
    assert bb.logit_scale.exp().item() == pytest.approx(1 / 0.07)  # open_clip's init, frozen


def test_without_context_or_adapters_it_is_the_zero_shot_head(images):
    model = text_model(coop_ctx_len=0)
    _, text_features = encode_text_init(model, CLASSES)
    zero_shot = ZeroShotHead(model.backbone.visual.proj, model.backbone.logit_scale, len(CLASSES))
    zero_shot.text_features.copy_(text_features)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(images), zero_shot(model.features(images)), rtol=0, atol=1e-5)


# --- what trains -----------------------------------------------------------------------------------

ADAPTER = [f"{part}.{p}" for part in ("norm", "down", "up") for p in ("weight", "bias")]


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({}, {"head.ctx"}),
        ({"coop_init": "photo"}, {"head.ctx"}),
        (
            {"clip_adapter": True},
            {"head.ctx"} | {f"head.{side}.{p}" for side in ("image_adapter", "text_adapter") for p in ADAPTER},
        ),
        ({"coop_ctx_len": 0, "proj_tuning": True}, {"backbone.visual.proj", "backbone.text_projection"}),
    ],
)
def test_only_the_intended_tensors_require_grad(fields, expected):
    model = text_model(**fields)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected
    assert set(model.trainable_state_dict()) == expected | {"head.tokens"}


def test_one_training_step_changes_only_the_trained_tensors(images):
    model = text_model(name=DIMS, clip_adapter=True, proj_tuning=True)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: t.clone() for n, t in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.trainable_parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    loss_fn = build_loss("la", [40, 20, 10, 5], tau=1.0)
    model.train()
    train_step(model, loss_fn, images, torch.tensor([0, 1, 2, 3]), optimizer)
    after = model.state_dict()
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed <= trained
    # gradients reach the context through the frozen text tower, and both projections and up-projections
    must = {"head.ctx", "backbone.visual.proj", "backbone.text_projection"}
    must |= {"head.image_adapter.up.weight", "head.text_adapter.up.weight"}
    assert must <= changed


def test_eval_caches_the_text_features_until_a_tensor_they_depend_on_changes(images, monkeypatch):
    model = text_model(clip_adapter=True)
    calls = []
    encode = TextHead.encode_text
    monkeypatch.setattr(TextHead, "encode_text", lambda self, *a: calls.append(1) or encode(self, *a))
    model.train()
    with torch.no_grad():
        training = model(images)
        model(images)
    assert len(calls) == 2  # every training step recomputes them
    model.eval()
    with torch.no_grad():
        cached = model(images)
        model(images[:2])
        assert len(calls) == 3
        torch.testing.assert_close(cached, training, rtol=0, atol=1e-6)
        state = model.trainable_state_dict()
        # in place, as a checkpoint load or an optimizer step writes (not a constant: LayerNorm removes that)
        state["head.ctx"].add_(torch.randn(4, 64, generator=torch.Generator().manual_seed(0)))
        moved = model(images)
        assert len(calls) == 4 and not torch.allclose(moved, cached)
    model(images)  # grad enabled: recomputed, so that gradients could flow
    assert len(calls) == 5


def test_prompts_must_be_set_and_fit():
    model = text_model(classnames=None)
    with pytest.raises(DataError, match="class prompts not set"):
        model(torch.zeros(1, 3, 32, 32))
    with pytest.raises(DataError, match="3 class names for a 4-class model"):
        model.head.set_classnames(CLASSES[:3])
    with pytest.raises(DataError, match=r"class 'long word word [a-z ]*\.\.\.': its prompt fills the text") as info:
        model.head.set_classnames(["dog", "cat", "fish", "long" + " word" * 80])
    assert len(str(info.value)) < 200


def test_no_room_for_a_class_name_is_refused():
    with pytest.raises(ParamsError, match="model.coop_ctx_len: 75 context tokens leave no room"):
        text_model(coop_ctx_len=75)


# --- params and method ---------------------------------------------------------------------------


def test_coop_is_a_method_with_the_references_recipe():
    assert METHOD_DEFAULTS["coop"] == {"epochs": 50, "lr": 0.002, "mda": False}
    train = resolved_train(TrainParams(method="coop", batch_size=32, micro_batch=32))
    assert (train.epochs, train.lr, train.mda, train.batch_size) == (50, 0.002, False, 32)


def test_for_method_builds_the_text_config_and_leaves_other_methods_alone():
    params = ModelParams(coop_ctx_len=8, coop_cls_pos="front", clip_adapter=True, clip_adapter_dim=2, proj_tuning=True)
    coop = ModelConfig.for_method(params, "coop", 10)
    assert (coop.peft, coop.classifier, coop.coop_ctx_len, coop.coop_cls_pos) == ("none", "text", 8, "front")
    assert (coop.clip_adapter, coop.clip_adapter_dim, coop.proj_tuning) == (True, 2, True)
    assert ModelConfig.model_validate(coop.to_dict()) == coop
    photo = ModelConfig.for_method(ModelParams(coop_init="photo", coop_ctx_len=8, coop_cls_pos="front"), "coop", 10)
    assert (photo.coop_init, photo.coop_ctx_len, photo.coop_cls_pos) == ("photo", 4, "end")  # the template fixes them
    plain = ModelConfig.for_method(ModelParams(), "lift+", 10)
    assert ModelConfig.for_method(ModelParams(coop_ctx_len=8, coop_init="photo"), "lift+", 10) == plain
    assert set(plain.to_dict()).isdisjoint({"coop_ctx_len", "coop_init", "clip_adapter", "proj_tuning"})
    zs = ModelConfig.for_method(ModelParams(), "zs", 10)
    assert (zs.classifier, zs.peft) == ("zero-shot", "none")


@pytest.mark.parametrize(
    "model, train, message",
    [
        (
            {"clip_adapter": True},
            {"method": "lift+"},
            "model.clip_adapter acts on the text classifier of train.method coop; lift+ classifies",
        ),
        ({"proj_tuning": True}, {"method": "zs"}, "model.proj_tuning acts on the text classifier"),
        ({"coop_ctx_len": 0}, {"method": "coop"}, "model.coop_ctx_len 0 trains nothing"),
        ({"coop_ctx_len": 0, "coop_init": "photo"}, {"method": "coop"}, "model.coop_ctx_len 0 asks for none"),
        ({"coop_cls_pos": "left"}, {"method": "coop"}, "'model.coop_cls_pos' is 'left', expected one of"),
    ],
)
def test_combinations_the_reference_cannot_express_are_one_line_errors(model, train, message):
    with pytest.raises(ParamsError, match=re.escape(message)) as info:
        parse_params({"model": model, "train": train})
    assert "\n" not in str(info.value)


def test_text_fields_need_the_text_classifier():
    with pytest.raises(ValueError, match="clip_adapter applies to the text classifier only"):
        ModelConfig(num_classes=3, clip_adapter=True)


# --- peft-summary ----------------------------------------------------------------------------------


def _summary(*args):
    app = typer.Typer()
    app.command()(peft_summary)
    result = CliRunner().invoke(app, ["--json", "--classifier", "text", "--peft", "none", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize(
    "args, fields, expected",
    [
        # the context: ctx_len x text width
        (["--model", TINY_MODEL], {}, {"context": 4 * 64, "clip_adapter": 0, "proj_tuning": 0}),
        (["--model", DIMS, "--coop-ctx-len", "7"], {"coop_ctx_len": 7}, {"context": 7 * 32}),
        (["--model", DIMS, "--coop-init", "photo"], {"coop_init": "photo"}, {"context": 5 * 32}),
        # 2 x Adapter(d = embed_dim, b): LayerNorm 2d + down d*b + b + up b*d + d
        (
            ["--model", DIMS, "--coop-ctx-len", "0", "--clip-adapter", "--clip-adapter-dim", "3"],
            {"coop_ctx_len": 0, "clip_adapter": True, "clip_adapter_dim": 3},
            {"context": 0, "clip_adapter": 2 * (2 * 24 + (24 * 3 + 3) + (3 * 24 + 24))},
        ),
        # visual.proj (image width x embed) + text_projection (text width x embed)
        (
            ["--model", DIMS, "--proj-tuning"],
            {"proj_tuning": True},
            {"context": 4 * 32, "proj_tuning": 48 * 24 + 32 * 24},
        ),
    ],
)
def test_peft_summary_counts_are_the_formula_and_the_built_models(args, fields, expected):
    summary = _summary(*args, "-k", "5")
    for key, value in expected.items():
        assert summary["text_head"][key] == value
    name = args[1]
    built = build_model(ModelConfig(name=name, num_classes=5, peft="none", classifier="text", **fields))
    actual = sum(p.numel() for p in built.trainable_parameters())
    assert summary["trainable_total"] == summary["formula"] == sum(summary["text_head"].values()) == actual


def test_peft_summary_adds_the_text_head_to_a_vision_peft():
    summary = _summary("--model", TINY_MODEL, "-k", "10", "--peft", "adaptformer", "--clip-adapter")
    r = 1  # 2 ** floor(log2(10 / 8))
    assert summary["formula"] == 4 * (2 * 64 * r + r + 3 * 64 + 1) + 4 * 64 + 2 * (2 * 64 + 64 * 4 + 4 + 4 * 64 + 64)
    assert summary["formula"] == summary["trainable_total"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--clip-adapter"], "--clip-adapter applies to the text classifier only: add --classifier text"),
        (["--classifier", "text", "--coop-init", "magic"], "--coop-init is 'magic', expected photo"),
        (["--classifier", "text", "--coop-ctx-len", "99"], "--coop-ctx-len is 99, expected 0 to 75"),
    ],
)
def test_peft_summary_text_options_are_checked(args, message):
    app = typer.Typer()
    app.command()(peft_summary)
    result = CliRunner().invoke(app, ["--model", TINY_MODEL, *args])
    assert result.exit_code == 1
    assert message in result.output


# --- the training run ------------------------------------------------------------------------------


def test_the_training_run_sets_the_class_prompts_and_needs_no_head_file(tmp_path):
    params = parse_params({"train": {"method": "coop", "batch_size": 32, "micro_batch": 32}})
    model = build_model(ModelConfig.for_method(params.model, "coop", len(CLASSES)))
    train = resolved_train(params.train)
    source = initialise_head(model, params, train, CLASSES, [], tmp_path / "absent.pt", torch.device("cpu"), "float")
    assert source == "text:X X X X {}."
    assert torch.equal(model.head.tokens, tokens_of([f"X X X X {n.replace('_', ' ')}." for n in CLASSES]))


def test_coop_trains_in_the_loop_and_its_checkpoint_predicts_the_same(tmp_path, images):
    shards = write_shards(tmp_path / "shards", num_classes=4, per_class=6, per_shard=24)
    model = text_model(clip_adapter=True)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    pre = model.preprocess
    dataset = ShardIndex(shards, train_transform(pre.image_size, pre.mean, pre.std, 1, mda=False), num_classes=4)
    config = RunConfig(
        epochs=1, lr=0.002, batch_size=8, micro_batch=8, workers=0, seed=0, device="cpu", fingerprint="t"
    )
    logs = fit(model, dataset, build_loss("la", [6] * 4), config, tmp_path / "state.pt", progress=False)
    assert len(logs) == 1 and math.isfinite(logs[0].loss)
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    changed = {n for n, t in model.state_dict().items() if not torch.equal(t, before[n])}
    assert "head.ctx" in changed and changed <= trained
    save_checkpoint(tmp_path / "coop.pt", model)
    loaded, _, _ = model_from_checkpoint(tmp_path / "coop.pt", num_classes=4)
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


def test_coop_stages_train_and_evaluate(tmp_path):
    """shard -> train (coop, no head file) -> evaluate, through the stages' own entry points."""
    from faultkit import invoke, write_params
    from shard_tars import write_image_folder

    write_image_folder(tmp_path / "raw", ("ant", "bee", "sea_lion"), {"train": 6, "test": 2})
    params = write_params(
        tmp_path / "params.yaml",
        data={"source": "imagefolder", "root": str(tmp_path / "raw"), "imbalance_ratio": 1},
        model={"coop_cls_pos": "middle", "clip_adapter": True},
        train={"method": "coop", "epochs": 1, "batch_size": 6, "micro_batch": 6, "workers": 0, "validation": "none"},
        evaluate={"tte": False, "workers": 0},
    )
    assert invoke("shard", "--params", params, "--out", tmp_path / "shards").code == 0
    out = tmp_path / "model"
    done = invoke(
        "train", "--params", params, "--shards", tmp_path / "shards", "--head", tmp_path / "absent.pt",
        "--out", out / "adapter.pt", "--state", out / "last.pt", "--live", out / "live",
    )  # fmt: skip
    assert done.code == 0, done.stderr[-2000:]
    ckpt = torch.load(out / "adapter.pt", weights_only=True)
    assert ckpt["extra"]["method"] == "coop" and ckpt["config"]["classifier"] == "text"
    assert ckpt["config"]["coop_cls_pos"] == "middle" and ckpt["state"]["head.ctx"].shape == (4, 64)
    done = invoke(
        "evaluate", "--params", params, "--shards", tmp_path / "shards", "--model", out / "adapter.pt",
        "--out", tmp_path / "metrics",
    )  # fmt: skip
    assert done.code == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert metrics["test"]["images"] == 6 and 0 <= metrics["test"]["acc"] <= 100
