import shutil

import open_clip
import pytest
import torch

from liftplus.errors import CheckpointError, ParamsError
from liftplus.model import TINY_MODEL, backbone_fingerprint, image_features, load_backbone


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_tiny_config_is_registered_with_the_requested_shape():
    config = open_clip.get_model_config(TINY_MODEL)
    assert config["embed_dim"] == 64
    vision, text = config["vision_cfg"], config["text_cfg"]
    assert (vision["image_size"], vision["patch_size"], vision["width"], vision["layers"]) == (32, 8, 64, 4)
    assert vision["width"] // vision["head_width"] == 4
    assert (text["width"], text["heads"], text["layers"], text["context_length"]) == (64, 4, 2, 77)

    model, preprocess = load_backbone(TINY_MODEL)
    blocks = model.visual.transformer.resblocks
    assert len(blocks) == 4 and blocks[0].attn.num_heads == 4
    assert blocks[0].mlp[0].out_features == 256
    assert model.visual.transformer.batch_first and blocks[0].attn.batch_first
    assert preprocess.image_size == 32
    assert preprocess.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert preprocess.std == tuple(open_clip.OPENAI_DATASET_STD)


def test_default_tokenizer_works_offline():
    tokens = open_clip.get_tokenizer(TINY_MODEL)(["a photo of a cat.", "a photo of a sea lion."])
    assert tokens.shape == (2, 77)
    assert tokens[:, 0].tolist() == [49406, 49406]  # start of text
    # end of text after 5 words + "." and 6 words + "."
    assert tokens.argmax(dim=-1).tolist() == [7, 8]
    assert tokens[0, 7].item() == 49407
    assert open_clip.decode(tokens[0, 1:7]).strip() == "a photo of a cat ."


def test_every_backbone_parameter_is_frozen():
    model, _ = load_backbone(TINY_MODEL)
    assert all(not p.requires_grad for p in model.parameters())


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(99)
    expected_next = torch.rand(3)
    torch.manual_seed(99)
    a, _ = load_backbone(TINY_MODEL, None, seed=0)
    assert torch.equal(torch.rand(3), expected_next)
    b, _ = load_backbone(TINY_MODEL, None, seed=0)
    c, _ = load_backbone(TINY_MODEL, None, seed=1)
    _assert_same_weights(_state(a), _state(b))
    assert not torch.equal(a.visual.conv1.weight, c.visual.conv1.weight)


def test_image_features_match_open_clip_forward_up_to_ln_post(images, reference_features):
    model, _ = load_backbone(TINY_MODEL, None, seed=0)
    model.eval()
    with torch.no_grad():
        ours = image_features(model.visual, images)
        projected = model.visual(images)
    expected = reference_features(images, seed=0)
    assert ours.shape == (4, 64)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ours @ model.visual.proj, projected, rtol=1e-5, atol=1e-5)


def test_local_checkpoint_path_loads_its_weights(tmp_path):
    source, _ = load_backbone(TINY_MODEL, None, seed=5)
    path = tmp_path / "tiny-clip.pt"
    torch.save(source.state_dict(), path)
    loaded, _ = load_backbone(TINY_MODEL, pretrained=str(path), seed=0)
    _assert_same_weights(_state(source), _state(loaded))
    assert all(not p.requires_grad for p in loaded.parameters())


def _assert_one_line_naming(exc_info, path) -> None:
    message = str(exc_info.value)
    assert "\n" not in message
    assert str(path) in message


def test_missing_checkpoint_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError) as exc_info:
        load_backbone(TINY_MODEL, pretrained=str(path))
    _assert_one_line_naming(exc_info, path)


def test_corrupt_checkpoint_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"PK\x03\x04 this is not a torch zip archive" * 10)
    with pytest.raises(CheckpointError) as exc_info:
        load_backbone(TINY_MODEL, pretrained=str(path))
    _assert_one_line_naming(exc_info, path)


def test_checkpoint_of_another_architecture_is_a_one_line_error(tmp_path):
    other = open_clip.create_model("ViT-B-32", pretrained=None)  # random init, nothing downloaded
    state = {k: v for k, v in other.state_dict().items() if k.startswith("visual.ln_post")}
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc_info:
        load_backbone(TINY_MODEL, pretrained=str(path))
    _assert_one_line_naming(exc_info, path)


def test_checkpoint_with_a_wrong_shape_is_a_one_line_error(tmp_path):
    source, _ = load_backbone(TINY_MODEL, None, seed=0)
    state = source.state_dict()
    state["visual.conv1.weight"] = torch.zeros(64, 3, 4, 4)
    path = tmp_path / "wrong-shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as exc_info:
        load_backbone(TINY_MODEL, pretrained=str(path))
    _assert_one_line_naming(exc_info, path)


class _Payload:
    pass


def test_checkpoint_holding_a_pickled_object_is_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": _Payload()}, path)
    with pytest.raises(CheckpointError) as exc_info:
        load_backbone(TINY_MODEL, pretrained=str(path))
    _assert_one_line_naming(exc_info, path)


def test_unknown_model_name_is_a_params_error():
    with pytest.raises(ParamsError, match="model.name: 'ViT-Nope'"):
        load_backbone("ViT-Nope")


def test_fingerprint_tracks_config_seed_and_file_content_not_path(tmp_path):
    assert backbone_fingerprint(TINY_MODEL, None, 0) == backbone_fingerprint(TINY_MODEL, None, 0)
    assert backbone_fingerprint(TINY_MODEL, None, 0) != backbone_fingerprint(TINY_MODEL, None, 1)
    assert backbone_fingerprint(TINY_MODEL, None) != backbone_fingerprint("ViT-B-16", None)

    source, _ = load_backbone(TINY_MODEL, None, seed=0)
    first = tmp_path / "a.pt"
    torch.save(source.state_dict(), first)
    copy = tmp_path / "moved" / "b.pt"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    assert backbone_fingerprint(TINY_MODEL, str(first)) == backbone_fingerprint(TINY_MODEL, str(copy))
    assert backbone_fingerprint(TINY_MODEL, str(first)) != backbone_fingerprint(TINY_MODEL, None)

    state = source.state_dict()
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, copy)
    assert backbone_fingerprint(TINY_MODEL, str(first)) != backbone_fingerprint(TINY_MODEL, str(copy))
