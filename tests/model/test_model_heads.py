import math

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F

from liftplus.errors import CheckpointError, DataError
from liftplus.model import (
    TINY_MODEL,
    CosineClassifier,
    L2NormClassifier,
    LinearClassifier,
    ModelConfig,
    build_model,
    class_mean_weights,
    class_prompts,
    encode_text_init,
    linear_probe_weights,
    load_backbone,
    random_weights,
)
from liftplus.model.heads import set_head_weights

CLASSNAMES = ["tabby_cat", "golden retriever", "sea_lion", "fire truck", "tulip"]


def test_cosine_classifier_is_scaled_cosine_similarity_without_bias():
    head = CosineClassifier(6, 3, scale=25.0)
    assert head.bias is None
    features = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    f, w = features.numpy(), head.weight.detach().numpy()
    expected = np.array(
        [[25 * f[i] @ w[k] / (np.linalg.norm(f[i]) * np.linalg.norm(w[k])) for k in range(3)] for i in range(4)]
    )
    np.testing.assert_allclose(head(features).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert abs(head(features)).max() <= 25.0 + 1e-4


def test_classifier_reset_gives_unit_rows_and_zero_bias():
    torch.manual_seed(0)
    head = LinearClassifier(64, 10)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(10))
    assert torch.count_nonzero(head.bias) == 0
    x = torch.randn(3, 64)
    torch.testing.assert_close(head(x), x @ head.weight.T)
    weights = random_weights(10, 64, seed=4)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(10))
    assert torch.equal(weights, random_weights(10, 64, seed=4))


def test_l2norm_classifier_normalises_weights_only():
    head = L2NormClassifier(8, 4)
    with torch.no_grad():
        head.weight.mul_(torch.arange(1, 5).float().unsqueeze(1))
    x = torch.randn(2, 8)
    torch.testing.assert_close(head(x), x @ (head.weight / head.weight.norm(dim=1, keepdim=True)).T)


def test_class_mean_weights_are_normalised_means():
    features = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    weights = class_mean_weights(features, labels, 3)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.0], [0.0, 1.0], [s, s]]))


def test_class_mean_without_a_class_is_a_data_error():
    with pytest.raises(DataError, match="class 1"):
        class_mean_weights(torch.randn(4, 3), torch.tensor([0, 0, 2, 2]), 3)


def _clusters(num_classes: int, per_class: int = 30, dim: int = 16, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(num_classes, dim, generator=generator), dim=-1) * 3
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=generator)
    return features, labels


@pytest.mark.parametrize("num_classes", [2, 5])
def test_linear_probe_weights_classify_separable_features(num_classes):
    features, labels = _clusters(num_classes)
    weights = linear_probe_weights(features, labels, num_classes)
    assert weights.shape == (num_classes, 16)
    torch.testing.assert_close(weights.norm(dim=1), torch.ones(num_classes))
    accuracy = ((features @ weights.T).argmax(dim=1) == labels).float().mean().item()
    assert accuracy > 0.95


def test_set_head_weights_checks_the_shape():
    head = CosineClassifier(64, 10)
    with pytest.raises(CheckpointError, match=r"text_init.pt: shape \(9, 64\)"):
        set_head_weights(head, torch.randn(9, 64), "text_init.pt")
    weights = torch.randn(10, 64)
    set_head_weights(head, weights)
    torch.testing.assert_close(head.weight, F.normalize(weights, dim=-1))


def test_class_prompts_read_underscores_as_spaces():
    assert class_prompts(["sea_lion", "tulip"]) == ["a photo of a sea lion.", "a photo of a tulip."]
    assert class_prompts(["x_y"], "itap of a {}.") == ["itap of a x y."]


def _open_clip_text_features(backbone, classnames):
    tokens = open_clip.get_tokenizer(TINY_MODEL)(class_prompts(classnames))
    with torch.no_grad():
        return backbone.encode_text(tokens, normalize=True), tokens


def test_semantic_init_maps_text_into_the_image_feature_space():
    model = build_model(ModelConfig(num_classes=len(CLASSNAMES)))
    weights, text = encode_text_init(model, CLASSNAMES, batch_size=2)
    reference, _ = load_backbone(TINY_MODEL, None, seed=0)
    expected_text, _ = _open_clip_text_features(reference, CLASSNAMES)
    torch.testing.assert_close(text, expected_text, rtol=1e-5, atol=1e-6)
    proj = reference.visual.proj.detach()
    assert weights.shape == (len(CLASSNAMES), 64)
    torch.testing.assert_close(weights, F.normalize(expected_text @ proj.T, dim=-1), rtol=1e-5, atol=1e-6)

    model.init_head(weights)
    mapped = text @ proj.T  # text features carried into the image space, unnormalised
    logits = model.head(mapped)
    assert logits.argmax(dim=1).tolist() == list(range(len(CLASSNAMES)))
    torch.testing.assert_close(logits.diagonal(), torch.full((len(CLASSNAMES),), 25.0))


def test_zero_shot_head_equals_open_clip_logits(images):
    model = build_model(ModelConfig(num_classes=len(CLASSNAMES), peft="none", classifier="zero-shot"))
    model.eval()
    _, text = encode_text_init(model, CLASSNAMES)
    model.init_head(text)
    with torch.no_grad():
        logits = model(images)
    reference, _ = load_backbone(TINY_MODEL, None, seed=0)
    reference.eval()
    _, tokens = _open_clip_text_features(reference, CLASSNAMES)
    with torch.no_grad():
        expected, _ = reference.get_logits(images, tokens)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert not any(p.requires_grad for p in model.parameters())
