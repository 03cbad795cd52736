"""Checkpoints and head inits that belong to another model, or are not plain tensors, are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from faultkit import (
    Outcome,
    assert_nothing_left,
    assert_one_line_error,
    invoke,
    limit_memory,
    run_stage,
    save_untrained_checkpoint,
    stage_env,
    write_params,
)
from PIL import Image
from stageproc import train_args
from typer.testing import CliRunner

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def evaluate(params: Path, shards: Path, model: Path, tmp_path: Path):
    out = tmp_path / "out" / "metrics"
    return invoke("evaluate", "--params", params, "--shards", shards, "--model", model, "--out", out)


def train(params: Path, shards: Path, head: Path, tmp_path: Path):
    out = tmp_path / "out"
    return invoke("train", *train_args(params, shards, head, out))


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
    assert_one_line_error(
        done, f"{model}: trained for other class names", "label 0 is 'airplane', the shards say 'T-shirt/top'"
    )
    assert_nothing_left(tmp_path / "out")


def test_evaluate_checkpoint_from_another_backbone(tmp_path, params_file, shards, classnames):
    """Trained on a local backbone file that has since been replaced by other weights."""
    weights = backbone_file(tmp_path / "backbone.pt", seed=1)
    params = write_params(tmp_path / "params.yaml", params_file, model={"pretrained": str(weights)})
    model = save_untrained_checkpoint(tmp_path / "adapter.pt", params, classnames)
    backbone_file(weights, seed=2)
    done = evaluate(params, shards, model, tmp_path)
    assert_one_line_error(
        done, f"{model}: trained on a different backbone than liftplus-tiny-vit", f"pretrained={weights}"
    )
    assert_nothing_left(tmp_path / "out")


def test_train_refuses_head_init_for_other_class_names(tmp_path, params_file, shards, head):
    from liftplus.training.head_init import save_text_init

    theirs = torch.load(head, weights_only=True)
    other = tmp_path / "text_init.pt"
    save_text_init(
        other,
        weight=theirs["weight"],
        text_features=theirs["text_features"],
        classnames=CIFAR10,
        template=theirs["template"],
        fingerprint=theirs["backbone_fingerprint"],
    )
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
    done = run_stage(
        "evaluate", "--params", params_file, "--shards", shards, "--model", evil, "--out", tmp_path / "out" / "metrics"
    )
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


# --- a small file that names a huge model ---------------------------------------------
# ViT-bigG-14 alone is 2.5 billion parameters, 10 GB in float32: under limit_memory() (4 GiB) a
# reader that builds it fails; one that checks the config against the tensors first does not.


def with_config(checkpoint: Path, dest: Path, **config) -> Path:
    """``checkpoint`` with its config edited, and the backbone fingerprint that config gives (anyone can
    compute it offline for a pretrained tag): its tensors stay the tiny model's."""
    from liftplus.model.backbone import backbone_fingerprint

    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["config"].update(config)
    edited = ckpt["config"]
    if open_clip.get_model_config(edited["name"]) is not None:
        ckpt["backbone_fingerprint"] = backbone_fingerprint(edited["name"], edited["pretrained"], edited["seed"])
    torch.save(ckpt, dest)
    return dest


def hub_caches(tmp_path: Path) -> dict[str, str]:
    """Where open_clip / huggingface_hub would put a download: empty folders of this test's own."""
    return {
        "HF_HOME": str(tmp_path / "hf"),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_OFFLINE": "1",
    }


def assert_nothing_downloaded(tmp_path: Path) -> None:
    for folder in ("hf", "cache", "torch"):
        assert [p for p in (tmp_path / folder).rglob("*") if p.is_file()] == [], folder


BIG_G = {"name": "ViT-bigG-14", "pretrained": "laion2b_s39b_b160k"}


def test_evaluate_refuses_a_small_checkpoint_naming_a_huge_model(tmp_path, params_file, shards, checkpoint):
    model = with_config(checkpoint, tmp_path / "adapter.pt", **BIG_G)
    assert model.stat().st_size < 64 * 1024
    out = tmp_path / "out" / "metrics"
    done = run_stage(
        "evaluate",
        "--params",
        params_file,
        "--shards",
        shards,
        "--model",
        model,
        "--out",
        out,
        timeout=60,
        preexec_fn=limit_memory(),
        **hub_caches(tmp_path),
    )
    assert_one_line_error(
        done, f"{model}: key 'head.weight' has shape (10, 64), expected (10, 1664)", "ViT-bigG-14 with 10 classes"
    )
    assert_nothing_left(tmp_path / "out")
    assert_nothing_downloaded(tmp_path)


def test_predict_refuses_a_small_checkpoint_naming_a_huge_model(tmp_path, checkpoint):
    model = with_config(checkpoint, tmp_path / "adapter.pt", **BIG_G)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (10, 200, 90)).save(image)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "liftplus"), "predict", str(image), "--model", str(model)],
        env=stage_env(**hub_caches(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit_memory(),
        check=False,
    )
    assert_one_line_error(
        Outcome(done.returncode, done.stdout, done.stderr),
        f"{model}: key 'head.weight' has shape (10, 64), expected (10, 1664)",
    )
    assert_nothing_downloaded(tmp_path)


@pytest.mark.parametrize(
    "config, message",
    [
        (
            {"bottleneck": 100000},
            (
                "key 'backbone.visual.transformer.resblocks.0.tuner.adaptformer.down.weight' "
                "has shape (1, 64), expected (100000, 64)"
            ),
        ),
        ({"num_classes": 10**7}, "key 'head.weight' has shape (10, 64), expected (10000000, 64)"),
        ({"num_classes": 11}, "key 'head.weight' has shape (10, 64), expected (11, 64)"),
        ({"name": "no-such-model"}, "config 'name': unknown model 'no-such-model'"),
    ],
)
def test_predict_checks_the_config_against_the_tensors_before_building(config, message, tmp_path, checkpoint):
    """Each of these used to build (or try to) the model the config names: gigabytes, or a traceback."""
    from liftplus.cli import app

    model = with_config(checkpoint, tmp_path / "adapter.pt", **config)
    image = tmp_path / "x.png"
    Image.new("RGB", (40, 30), (10, 200, 90)).save(image)
    result = CliRunner().invoke(app, ["predict", str(image), "--model", str(model)])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {model}: {message}"), result.stderr


def test_evaluate_refuses_blocks_beyond_the_model_depth(tmp_path, params_file, shards, checkpoint):
    """A config naming a shallower model than the tensors: one line, not a missing-key hunt after a build."""
    ckpt = torch.load(checkpoint, weights_only=True)
    prefix = "backbone.visual.transformer.resblocks."
    extra = {
        k.replace(f"{prefix}3.", f"{prefix}7."): v for k, v in ckpt["state"].items() if k.startswith(f"{prefix}3.")
    }
    ckpt["state"].update(extra)
    model = tmp_path / "adapter.pt"
    torch.save(ckpt, model)
    done = evaluate(params_file, shards, model, tmp_path)
    assert_one_line_error(
        done, f"{model}: key '{prefix}7.tuner.adaptformer", "is for block 7, liftplus-tiny-vit has 4 blocks"
    )
    assert_nothing_left(tmp_path / "out")
