import os

import pytest
import torch

from liftplus.errors import CheckpointError
from liftplus.model import (
    ModelConfig,
    build_model,
    load_checkpoint,
    load_trainable_state,
    model_from_checkpoint,
    save_checkpoint,
)
from liftplus.model.checkpoint import FORMAT
from liftplus.params import ModelParams


@pytest.fixture
def trained(perturb):
    model = build_model(ModelConfig(num_classes=12, seed=0))
    perturb(model)
    return model


def _one_line(exc_info) -> str:
    message = str(exc_info.value)
    assert "\n" not in message
    return message


def test_round_trip_gives_bitwise_equal_logits(tmp_path, trained, images):
    path = tmp_path / "model" / "adapter.pt"
    save_checkpoint(path, trained, extra={"epoch": 3, "metrics": {"acc": 51.5}})
    assert sorted(os.listdir(path.parent)) == ["adapter.pt"]  # nothing half-written left beside it
    loaded, config, ckpt = model_from_checkpoint(path, num_classes=12)
    assert config == trained.config
    assert ckpt["extra"] == {"epoch": 3, "metrics": {"acc": 51.5}}
    trained.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), trained(images))


def test_checkpoint_holds_only_trainable_tensors(tmp_path, trained):
    path = tmp_path / "adapter.pt"
    save_checkpoint(path, trained)
    ckpt = load_checkpoint(path)
    assert ckpt["format"] == FORMAT
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert set(ckpt["state"]) == trainable
    assert sum(t.numel() for t in ckpt["state"].values()) == 4 * (2 * 64 * 1 + 1 + 3 * 64 + 1) + 12 * 64
    whole = sum(p.numel() for p in trained.parameters())
    assert path.stat().st_size < 0.02 * whole * 4


def test_zero_shot_checkpoint_keeps_the_text_features(tmp_path, images):
    model = build_model(ModelConfig(num_classes=3, peft="none", classifier="zero-shot"))
    model.init_head(torch.randn(3, 64, generator=torch.Generator().manual_seed(0)))
    path = tmp_path / "zs.pt"
    save_checkpoint(path, model)
    assert list(load_checkpoint(path)["state"]) == ["head.text_features"]
    loaded, _, _ = model_from_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))


@pytest.mark.parametrize(
    "fields",
    [
        {"coop_ctx_len": 3, "coop_cls_pos": "middle", "clip_adapter": True, "proj_tuning": True},
        {"coop_init": "photo"},
    ],
)
def test_text_head_round_trip_gives_bitwise_equal_logits(tmp_path, images, perturb, fields):
    config = ModelConfig(num_classes=3, peft="none", classifier="text", seed=2, **fields)
    model = build_model(config)
    model.head.set_classnames(["dog", "sea_lion", "cat"])
    perturb(model)
    path = tmp_path / "coop.pt"
    save_checkpoint(path, model)
    state = load_checkpoint(path)["state"]
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(state) == trained | {"head.tokens"}  # the class prompts travel with the weights
    assert ("backbone.text_projection" in state) == bool(fields.get("proj_tuning"))
    loaded, loaded_config, _ = model_from_checkpoint(path, num_classes=3)
    assert loaded_config == config
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(loaded(images), model(images))
    for name, tensor in loaded.trainable_state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_text_head_checkpoint_of_another_context_length_is_refused_before_the_build(tmp_path):
    model = build_model(ModelConfig(num_classes=3, peft="none", classifier="text", coop_ctx_len=6))
    path = tmp_path / "coop.pt"
    save_checkpoint(path, model)
    ckpt = load_checkpoint(path)
    ckpt["config"]["coop_ctx_len"] = 4
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError) as exc_info:
        model_from_checkpoint(path)
    assert "key 'head.ctx' has shape (6, 64), expected (4, 64)" in _one_line(exc_info)


def test_missing_key_is_named(trained):
    state = dict(trained.trainable_state_dict())
    key = "backbone.visual.transformer.resblocks.2.tuner.adaptformer.scale"
    del state[key]
    with pytest.raises(CheckpointError) as exc_info:
        load_trainable_state(build_model(trained.config), state, source="adapter.pt")
    assert f"adapter.pt: missing key '{key}'" == _one_line(exc_info)


def test_unexpected_key_is_named(trained):
    state = dict(trained.trainable_state_dict())
    state["backbone.visual.proj"] = torch.zeros(64, 64)
    with pytest.raises(CheckpointError) as exc_info:
        load_trainable_state(build_model(trained.config), state, source="adapter.pt")
    assert "unexpected key 'backbone.visual.proj'" in _one_line(exc_info)


def test_shape_mismatch_is_named_and_nothing_is_loaded(trained):
    state = dict(trained.trainable_state_dict())
    key = "backbone.visual.transformer.resblocks.0.tuner.adaptformer.down.weight"
    state[key] = torch.zeros(2, 64)
    fresh = build_model(trained.config)
    before = {k: v.clone() for k, v in fresh.trainable_state_dict().items()}
    with pytest.raises(CheckpointError) as exc_info:
        load_trainable_state(fresh, state, source="adapter.pt")
    assert f"key '{key}' has shape (2, 64), the model expects (1, 64)" in _one_line(exc_info)
    for name, tensor in fresh.trainable_state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_checkpoint_for_another_peft_is_refused(tmp_path, trained):
    path = tmp_path / "adapter.pt"
    save_checkpoint(path, trained)
    other = build_model(ModelConfig(num_classes=12, peft="lora"))
    with pytest.raises(CheckpointError, match="missing key"):
        load_trainable_state(other, load_checkpoint(path)["state"])


class _Arbitrary:
    def __init__(self):
        self.payload = "anything"


def test_pickled_object_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "config": {}, "state": {}, "extra": _Arbitrary()}, path)
    with pytest.raises(CheckpointError) as exc_info:
        load_checkpoint(path)
    message = _one_line(exc_info)
    assert str(path) in message and "refused" in message


def test_corrupt_and_foreign_files_are_one_line_errors(tmp_path, trained):
    corrupt = tmp_path / "corrupt.pt"
    save_checkpoint(corrupt, trained)
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    missing = tmp_path / "absent.pt"
    for path, words in [(corrupt, "corrupt"), (foreign, "not a liftplus adapter"), (missing, "not found")]:
        with pytest.raises(CheckpointError) as exc_info:
            load_checkpoint(path)
        message = _one_line(exc_info)
        assert str(path) in message and words in message


def test_other_backbone_or_class_count_is_refused(tmp_path, trained):
    path = tmp_path / "adapter.pt"
    save_checkpoint(path, trained)
    with pytest.raises(CheckpointError, match="12 classes, the data has 10"):
        model_from_checkpoint(path, num_classes=10)
    ckpt = load_checkpoint(path)
    ckpt["backbone_fingerprint"] = "0" * 64
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="different backbone"):
        model_from_checkpoint(path)
    ckpt["config"]["peft"] = "magic"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="config 'peft'"):
        model_from_checkpoint(path)


def test_model_config_for_each_method():
    params = ModelParams(peft="lora", bottleneck=16, classifier="l2", scale=30, sdpa=False)
    lift = ModelConfig.for_method(params, "lift+", 100)
    assert (lift.peft, lift.bottleneck, lift.classifier, lift.scale, lift.sdpa) == ("lora", 16, "l2", 30, False)
    assert ModelConfig.for_method(params, "lift", 100).peft == "lora"
    assert ModelConfig.for_method(params, "fft", 100).peft == "full"
    assert ModelConfig.for_method(params, "lp", 100).peft == "none"
    zs = ModelConfig.for_method(params, "zs", 100)
    assert (zs.peft, zs.classifier) == ("none", "zero-shot")
    coop = ModelConfig.for_method(params, "coop", 100)
    assert (coop.peft, coop.classifier, coop.coop_ctx_len) == ("none", "text", 4)
    assert ModelConfig.model_validate(lift.to_dict()) == lift
