"""Assemble one training run from params and the sharded data: model, head init, data, loss.

The train stage calls :func:`prepare_training`, hands the result to
:func:`liftplus.train.fit`, then :func:`finish_training` writes the compact
checkpoint. Kept apart from the loop so the loop stays readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from liftplus.data.input_path import eval_input, resolve_hand_off, train_input
from liftplus.data.loader import ShardIndex
from liftplus.errors import ParamsError
from liftplus.head_init import load_text_init
from liftplus.io import sha256_file
from liftplus.losses import build_loss
from liftplus.model.backbone import backbone_fingerprint
from liftplus.model.build import LiftModel, ModelConfig, build_model
from liftplus.model.checkpoint import save_checkpoint
from liftplus.model.heads import class_mean_weights, linear_probe_weights
from liftplus.params import Params, TrainParams
from liftplus.train import (
    Distributed,
    RunConfig,
    code_fingerprint,
    distributed_from_env,
    pick_device,
    predict_features,
    run_fingerprint,
)

INIT_IMAGES_PER_CLASS = 100
"""Images per class for the class-mean and linear-probe inits (the reference's DownSampler)."""


@dataclass
class TrainingRun:
    model: LiftModel
    dataset: ShardIndex
    loss: nn.Module
    config: RunConfig
    dist: Distributed
    manifest: dict
    train: TrainParams


def prepare_training(
    params: Params, train: TrainParams, manifest: dict, train_shards: Sequence[Path], head_path: Path
) -> TrainingRun:
    """``train`` is the resolved train section (method defaults filled in)."""
    classnames = manifest["classnames"]
    num_classes = len(classnames)
    train_counts = manifest["splits"]["train"]["class_counts"]
    model_cfg = ModelConfig.for_method(params.model, train.method, num_classes)
    model = build_model(model_cfg)
    if train.epochs and not model.trainable_parameters():
        raise ParamsError(
            f"'train.epochs' is {train.epochs}, but train.method {train.method} has nothing to train; "
            "leave train.epochs null"
        )
    pre = model.preprocess
    dist = distributed_from_env()
    device = pick_device(train.device, dist)
    hand_off = resolve_hand_off(train.input, device)

    head_source = initialise_head(model, params, train, classnames, train_shards, head_path, device, hand_off)

    transform = train_input(hand_off, pre.image_size, pre.mean, pre.std, max(train.epochs, 1),
                            train.mda, train.mda_schedule, train.resize)
    dataset = ShardIndex(train_shards, transform, num_classes=num_classes, seed=train.seed)
    loss = build_loss(train.loss, train_counts, tau=train.tau, scale=params.model.scale)

    fingerprint = run_fingerprint(
        model=model_cfg.to_dict(),
        train=train.model_dump(exclude={"workers", "verify_checksums", "device", "input",
                                        "prefetch", "persistent_workers"}),
        input=hand_off,
        code=code_fingerprint(),
        head_init=params.model.head_init,
        head_source=head_source,
        shards=[s["sha256"] for s in manifest["splits"]["train"]["shards"]],
    )
    config = RunConfig(
        epochs=train.epochs, lr=train.lr, batch_size=train.batch_size, micro_batch=train.micro_batch,
        weight_decay=train.weight_decay, momentum=train.momentum, workers=train.workers, seed=train.seed,
        deterministic=train.deterministic, device=train.device, precision=train.precision,
        compile=train.compile, prefetch=train.prefetch, persistent_workers=train.persistent_workers,
        fingerprint=fingerprint,
    )
    return TrainingRun(model, dataset, loss, config, dist, manifest, train)


def initialise_head(
    model: LiftModel, params: Params, train: TrainParams, classnames: list[str],
    train_shards: Sequence[Path], head_path: Path, device: torch.device, hand_off: str,
) -> str:
    """Set the head's starting weights; return a string identifying where they came from.

    ``device`` and ``hand_off`` are the run's (this rank's GPU under torchrun)."""
    how = "zero-shot" if train.method == "zs" else params.model.head_init
    if how in ("semantic", "zero-shot"):
        fingerprint = backbone_fingerprint(model.config.name, model.config.pretrained, model.config.seed)
        text_init = load_text_init(head_path, classnames, fingerprint)
        key = "text_features" if how == "zero-shot" else "weight"
        model.init_head(text_init[key], source=str(head_path))
        return f"{how}:{sha256_file(head_path)}"
    if how == "random":
        return "random"
    features, labels = init_features(model, train_shards, len(classnames), train, device, hand_off)
    weights = class_mean_weights if how == "class_mean" else linear_probe_weights
    model.init_head(weights(features, labels, len(classnames)), source=how)
    return how


def init_features(
    model: LiftModel, train_shards: Sequence[Path], num_classes: int, train: TrainParams,
    device: torch.device, hand_off: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features of up to 100 training images per class, test-transformed."""
    pre = model.preprocess
    dataset = ShardIndex(train_shards, eval_input(hand_off, pre.image_size, pre.mean, pre.std), num_classes)
    generator = torch.Generator().manual_seed(train.seed)
    by_class: dict[int, list[int]] = {}
    for i in torch.randperm(len(dataset), generator=generator).tolist():
        picked = by_class.setdefault(dataset.samples[i].label, [])
        if len(picked) < INIT_IMAGES_PER_CLASS:
            picked.append(i)
    indices = sorted(i for picked in by_class.values() for i in picked)
    return predict_features(model, dataset, indices, train.micro_batch, train.workers, device, train.precision)


def finish_training(run: TrainingRun, out: Path) -> None:
    run.model.to("cpu")
    save_checkpoint(out, run.model, run.model.config, extra={
        "method": run.train.method,
        "classnames": run.manifest["classnames"],
        "train_counts": run.manifest["splits"]["train"]["class_counts"],
        "epochs": run.config.epochs,
        "run_fingerprint": run.config.fingerprint,
    })
    print(f"train: trainable weights → {out}")
