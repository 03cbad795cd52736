"""The tiny training run the loop tests share: 4 classes on the random tiny ViT, CPU, one thread.

``one_thread`` is a pytest fixture; a test module that wants it imports it (autouse applies there).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from liftplus.data.loader import ShardIndex
from liftplus.data.transforms import train_transform
from liftplus.model import ModelConfig, build_model
from liftplus.training.loop import RunConfig, fit

NUM_CLASSES, PER_CLASS, EPOCHS = 4, 12, 2
CPU = torch.device("cpu")


def make_model():
    return build_model(ModelConfig(num_classes=NUM_CLASSES))


@functools.cache
def preprocess():
    return make_model().preprocess


def make_dataset(shards, transform=None) -> ShardIndex:
    """The shards with ``transform``, by default the MDA training transform of the run."""
    pre = preprocess()
    transform = transform or train_transform(pre.image_size, pre.mean, pre.std, EPOCHS)
    return ShardIndex(shards, transform, num_classes=NUM_CLASSES, seed=0)


def run_config(**overrides) -> RunConfig:
    settings = dict(
        epochs=EPOCHS, lr=0.02, batch_size=16, micro_batch=8, workers=0, seed=0, device="cpu", fingerprint="test-run"
    )
    settings.update(overrides)
    return RunConfig(**settings)


def train(shards, state_path: Path, loss_fn: nn.Module | None = None, **overrides):
    """Fit a fresh model with :func:`run_config` ``overrides`` (and fit's hooks); return it and the logs."""
    model = make_model()
    hooks = {k: overrides.pop(k) for k in ("on_epoch", "stop") if k in overrides}
    logs = fit(
        model,
        make_dataset(shards),
        loss_fn or nn.CrossEntropyLoss(),
        run_config(**overrides),
        state_path,
        progress=False,
        **hooks,
    )
    return model, logs


def curves(logs) -> list[tuple]:
    """The deterministic part of epoch logs (timings vary from run to run)."""
    return [(log.epoch, log.loss, log.accuracy, log.lr) for log in logs]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"differ: {different[:5]}"


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


class CountingLoss(nn.Module):
    """Cross-entropy passed through ``hook(n, loss)`` at its ``n``-th call (1-based)."""

    def __init__(self, hook):
        super().__init__()
        self.hook = hook
        self.calls = 0

    def forward(self, logits, labels):
        self.calls += 1
        loss = nn.functional.cross_entropy(logits, labels)
        return self.hook(self.calls, loss)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine it is several times faster than two."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)
