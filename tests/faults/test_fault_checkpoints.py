"""Checkpoints and head inits that belong to another model, or are not plain tensors, are refused."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from faultkit import (
    assert_nothing_left, assert_one_line_error, invoke, run_stage, save_untrained_checkpoint, write_params,
)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def evaluate(params: Path, shards: Path, model: Path, tmp_path: Path):
    out = tmp_path / "out" / "metrics"
    return invoke("evaluate", "--params", params, "--shards", shards, "--model", model, "--out", out)


def train(params: Path, shards: Path, head: Path, tmp_path: Path):
    out = tmp_path / "out"
    return invoke("train", "--params", params, "--shards", shards, "--head", head,
                  "--out", out / "model" / "adapter.pt", "--state", out / "state" / "last.pt", "--live", out / "live")


def backbone_file(path: Path, seed: int) -> Path:
    """A local open_clip checkpoint of the tiny backbone (``model.pretrained: <path>``)."""
    from liftplus.model.backbone import TINY_MODEL, load_backbone

    backbone, _ = load_backbone(TINY_MODEL, None, seed=seed)
    torch.save(backbone.state_dict(), path)
    return path


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_evaluate_checkpoint_for_another_class_count(tmp_path, params_file, shards):
    model = save_untrained_checkpoint(tmp_path / "adapter.pt", params_file, CIFAR10[:5])
    done = evaluate(params_file, shards, model, tmp_path)
    assert_one_line_error(done, f"{model}: checkpoint has 5 classes, the data has 10")
    assert_nothing_left(tmp_path / "out")


def test_evaluate_checkpoint_for_other_class_names(tmp_path, params_file, shards):
    model = save_untrained_checkpoint(tmp_path / "adapter.pt", params_file, CIFAR10)
    done = evaluate(params_file, shards, model, tmp_path)
    assert_one_line_error(done, f"{model}: trained for other class names",
                          "label 0 is 'airplane', the shards say 'T-shirt/top'")
    assert_nothing_left(tmp_path / "out")


def test_evaluate_checkpoint_from_another_backbone(tmp_path, params_file, shards, classnames):
    """Trained on a local backbone file that has since been replaced by other weights."""
    weights = backbone_file(tmp_path / "backbone.pt", seed=1)
    params = write_params(tmp_path / "params.yaml", params_file, model={"pretrained": str(weights)})
    model = save_untrained_checkpoint(tmp_path / "adapter.pt", params, classnames)
    backbone_file(weights, seed=2)
    done = evaluate(params, shards, model, tmp_path)
    assert_one_line_error(done, f"{model}: trained on a different backbone than liftplus-tiny-vit",
                          f"pretrained={weights}")
    assert_nothing_left(tmp_path / "out")


def test_train_refuses_head_init_for_other_class_names(tmp_path, params_file, shards, head):
    from liftplus.head_init import save_text_init

    theirs = torch.load(head, weights_only=True)
    other = tmp_path / "text_init.pt"
    save_text_init(other, weight=theirs["weight"], text_features=theirs["text_features"], classnames=CIFAR10,
                   template=theirs["template"], fingerprint=theirs["backbone_fingerprint"])
    done = train(params_file, shards, other, tmp_path)
    assert_one_line_error(done, f"{other}: made for other class names", "rerun init_head")
    assert_nothing_left(tmp_path / "out")


def test_train_refuses_head_init_from_another_backbone(tmp_path, params_file, shards):
    weights = backbone_file(tmp_path / "backbone.pt", seed=1)
    params = write_params(tmp_path / "params.yaml", params_file, model={"pretrained": str(weights)})
    other = tmp_path / "text_init.pt"
    made = invoke("init_head", "--params", params, "--shards", shards, "--out", other)
    assert made.code == 0, made.stderr
    done = train(params_file, shards, other, tmp_path)  # model.pretrained back to null
    assert_one_line_error(done, f"{other}: made with another backbone", "rerun init_head")
    assert_nothing_left(tmp_path / "out")


def test_evaluate_refuses_pickled_object_checkpoint(tmp_path, params_file, shards):
    """A real process, as a user runs it: the payload must not run in it."""
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "liftplus-adapter/1", "state": {}, "config": Payload(marker)}, evil)
    done = run_stage("evaluate", "--params", params_file, "--shards", shards, "--model", evil,
                     "--out", tmp_path / "out" / "metrics")
    assert_one_line_error(done, f"{evil}: refused, holds objects other than tensors")
    assert not marker.exists()
    assert_nothing_left(tmp_path / "out")


def test_train_refuses_pickled_object_head_init(tmp_path, params_file, shards):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "text_init.pt"
    torch.save({"format": "liftplus-text-init/1", "weight": Payload(marker)}, evil)
    done = train(params_file, shards, evil, tmp_path)
    assert_one_line_error(done, f"{evil}: refused, holds objects other than tensors")
    assert not marker.exists()
    assert_nothing_left(tmp_path / "out")
