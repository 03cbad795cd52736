import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from liftplus.errors import DataError, ParamsError
from liftplus.training.losses import FocalLoss, LDAMLoss, LogitAdjustedLoss, build_loss

COUNTS = [300, 150, 60, 30, 10, 5]


def batch(seed=0, n=16, k=len(COUNTS)):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=gen) * 5, torch.randint(0, k, (n,), generator=gen)


def test_la_equals_ce_of_prior_adjusted_logits():
    logits, labels = batch()
    log_prior = torch.tensor(np.log(np.array(COUNTS) / np.sum(COUNTS)), dtype=torch.float32)
    for tau in (1.0, 0.5, 2.0):
        expected = F.cross_entropy(logits + tau * log_prior, labels)
        assert build_loss("la", COUNTS, tau=tau)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


def test_la_by_hand_on_two_classes():
    # counts 3:1 -> prior 0.75, 0.25; logits (0, 0), label 1:
    # adjusted (log .75, log .25), loss = -log(.25 / (.75 + .25)) = log 4
    loss = build_loss("la", [3, 1])(torch.zeros(1, 2), torch.tensor([1]))
    assert loss.item() == pytest.approx(math.log(4), rel=1e-6)


def test_la_with_uniform_prior_is_ce():
    logits, labels = batch(1)
    uniform = build_loss("la", [40] * len(COUNTS))
    assert uniform(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    assert build_loss("ce", COUNTS)(logits, labels).item() == pytest.approx(F.cross_entropy(logits, labels).item())


def test_la_differs_from_ce_on_a_long_tail():
    logits, labels = batch(2)
    assert abs(build_loss("la", COUNTS)(logits, labels) - F.cross_entropy(logits, labels)) > 1e-3


def test_balanced_softmax_is_la_with_tau_one():
    logits, labels = batch(3)
    la = build_loss("la", COUNTS, tau=1.0)(logits, labels)
    assert build_loss("bs", COUNTS)(logits, labels).item() == pytest.approx(la.item(), rel=1e-7)
    assert build_loss("bs", COUNTS, tau=0.3)(logits, labels).item() == pytest.approx(la.item(), rel=1e-7)


def test_focal_gamma_zero_is_ce_and_gamma_two_by_formula():
    logits, labels = batch(4)
    ce = F.cross_entropy(logits, labels).item()
    assert FocalLoss(gamma=0.0)(logits, labels).item() == pytest.approx(ce, rel=1e-6)
    p_true = torch.softmax(logits.double(), dim=1)[torch.arange(len(labels)), labels]
    expected = ((1 - p_true) ** 2 * -torch.log(p_true)).mean()
    assert build_loss("focal", COUNTS)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def test_ldam_margins_by_hand():
    # m_c = counts^-1/4 scaled so the largest is 0.5: counts 1 and 16 -> 0.5 and 0.25; 81 -> 0.5 / 3
    loss = LDAMLoss([1, 16, 81], max_m=0.5, scale=10.0)
    assert loss.margins.tolist() == pytest.approx([0.5, 0.25, 0.5 / 3], rel=1e-6)


def test_ldam_margin_only_on_the_true_class():
    logits, labels = batch(5)
    scale = 25.0
    counts = np.array(COUNTS, dtype=np.float64)
    margins = counts**-0.25
    margins *= 0.5 / margins.max()
    adjusted = logits.clone().double()
    for row, label in enumerate(labels.tolist()):
        adjusted[row, label] -= scale * margins[label]
    expected = F.cross_entropy(adjusted, labels)
    got = build_loss("ldam", COUNTS, scale=scale)(logits, labels)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # raising a wrong-class logit must not be offset by a margin: same change as in plain CE
    bumped = logits.clone()
    bumped[0, (labels[0] + 1) % len(COUNTS)] += 1.0
    adjusted_bumped = adjusted.clone()
    adjusted_bumped[0, (labels[0] + 1) % len(COUNTS)] += 1.0
    assert build_loss("ldam", COUNTS, scale=scale)(bumped, labels).item() == pytest.approx(
        F.cross_entropy(adjusted_bumped, labels).item(), rel=1e-5
    )


def test_priors_are_buffers_that_follow_the_module():
    la = LogitAdjustedLoss(COUNTS)
    ldam = LDAMLoss(COUNTS)
    assert "log_prior" in dict(la.named_buffers()) and "margins" in dict(ldam.named_buffers())
    assert la.double().log_prior.dtype == torch.float64
    assert ldam.to("meta").margins.device.type == "meta"


def test_la_keeps_float32_under_low_precision_logits():
    logits, labels = batch(6)
    loss = build_loss("la", COUNTS)(logits.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("name", ["la", "bs", "ldam"])
def test_zero_count_names_the_class(name):
    with pytest.raises(DataError, match="class 3 has 0 training images"):
        build_loss(name, [10, 5, 2, 0, 1])


def test_unknown_loss_is_a_params_error():
    with pytest.raises(ParamsError, match="train.loss"):
        build_loss("hinge", COUNTS)


def test_class_balanced_weights_by_formula():
    # Cui et al.: w_c = (1 - beta) / (1 - beta ** n_c), normalised to mean 1, beta 0.9999 as the reference
    counts = np.array(COUNTS, dtype=np.float64)
    weights = (1 - 0.9999) / (1 - 0.9999**counts)
    weights /= weights.mean()
    logits, labels = batch(7)
    loss = build_loss("cb", COUNTS)
    assert loss.class_weights.tolist() == pytest.approx(weights.tolist(), rel=1e-4)
    expected = F.cross_entropy(logits.double(), labels, weight=torch.tensor(weights))
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-4)


def test_generalized_reweight_weights_by_formula():
    # w_c = 1 / prior_c, normalised to mean 1: counts 300 and 5 weigh 1/300 : 1/5
    counts = np.array(COUNTS, dtype=np.float64)
    weights = 1 / (counts / counts.sum())
    weights /= weights.mean()
    loss = build_loss("grw", COUNTS)
    assert loss.class_weights.tolist() == pytest.approx(weights.tolist(), rel=1e-6)
    assert loss.class_weights[-1].item() / loss.class_weights[0].item() == pytest.approx(60.0, rel=1e-6)
    logits, labels = batch(8)
    expected = F.cross_entropy(logits.double(), labels, weight=torch.tensor(weights))
    assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-5)


def reference_lade(logits: torch.Tensor, labels: torch.Tensor, counts, remine_lambda=0.1, weight=0.1) -> float:
    """The reference's utils/losses.py LADELoss.forward, step by step, in float64."""
    counts = torch.tensor(counts, dtype=torch.float64)
    prior = counts / counts.sum()
    num_classes = len(counts)
    logits = logits.double()
    ce = F.cross_entropy(logits + torch.log(prior).unsqueeze(0), labels)
    mask = labels == torch.arange(num_classes).view(-1, 1)
    per_cls_pred_spread = logits.T * mask
    pred_spread = (logits - torch.log(prior + 1e-9) + math.log(1.0 / num_classes + 1e-9)).T
    num_samples_per_cls = mask.sum(-1).double()
    first = per_cls_pred_spread.sum(-1) / (num_samples_per_cls + 1e-8)
    second = torch.logsumexp(pred_spread, -1) - math.log(per_cls_pred_spread.size(-1))
    estim = -torch.sum((first - second - second**2 * remine_lambda) * prior)
    return (ce + weight * estim).item()


@pytest.mark.parametrize("seed", [9, 10])
def test_lade_matches_the_reference_computation(seed):
    logits, labels = batch(seed, n=32)
    expected = reference_lade(logits, labels, COUNTS)
    assert build_loss("lade", COUNTS)(logits, labels).item() == pytest.approx(expected, rel=1e-5)
    assert abs(expected - build_loss("la", COUNTS)(logits, labels).item()) > 1e-3  # the bound term counts


def test_new_losses_train_a_step_without_nan():
    logits, labels = batch(11)
    for name in ("cb", "grw", "lade"):
        weights = logits.clone().requires_grad_()
        build_loss(name, COUNTS)(weights, labels).backward()
        assert torch.isfinite(weights.grad).all(), name
