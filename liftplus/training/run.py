"""Assemble one training run from params and the sharded data: model, head init, data, loss.

The train stage calls :func:`prepare_training`, hands the result to
:func:`liftplus.training.loop.fit`, then :func:`finish_training` writes the compact
checkpoint. Kept apart from the loop so the loop stays readable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from liftplus.data.input_path import eval_input, resolve_hand_off, train_input
from liftplus.data.loader import ShardIndex
from liftplus.data.manifest import shard_paths
from liftplus.errors import DataError, ParamsError
from liftplus.evaluation.inference import predict_features
from liftplus.io import sha256_file
from liftplus.model.backbone import backbone_fingerprint
from liftplus.model.build import LiftModel, ModelConfig, build_model
from liftplus.model.checkpoint import save_checkpoint
from liftplus.model.heads import class_mean_weights, linear_probe_weights
from liftplus.params import Params, TrainParams
from liftplus.runtime import Distributed, distributed_from_env, pick_device
from liftplus.training.code_closure import code_fingerprint
from liftplus.training.head_init import load_text_init
from liftplus.training.loop import RunConfig, Validation, run_fingerprint
from liftplus.training.losses import build_loss

PLAIN_EXPAND = 0
"""The class-mean and linear-probe inits resize to the resolution itself (the reference's
``Resize(res) + CenterCrop(res)``), not to the test transform's larger short side (eval_resize)."""
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
    validation: Optional[Validation] = None
    samples: Optional[list[int]] = None
    """The training shards' samples to train on; None: all (a hold-out leaves its slice out)."""


def resolved_validation(train: TrainParams, manifest: dict) -> str:
    """``val``, ``holdout`` or ``off``: ``auto`` is the val split when the shards have one with samples.

    ``val`` asked for shards without a val split is an error, not a silent run without validation."""
    has_val = manifest["splits"].get("val", {}).get("num_samples", 0) > 0
    if train.validation == "auto":
        return "val" if has_val else "none"
    if train.validation == "val" and not has_val:
        raise DataError(
            "train.validation is 'val' but the shards have no val split with samples (set it to holdout, auto or off)"
        )
    return train.validation


def holdout_indices(labels: Sequence[int], fraction: float, seed: int) -> list[int]:
    """The held-out sample indices, sorted: per class ``max(1, round(fraction * n))`` of its n samples,
    at least one left to train on (a one-sample class keeps it), drawn per class in label order by a
    numpy Generator seeded with ``seed``: the rule ``data.holdout_fraction`` applies to image folders."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held: list[int] = []
    for label in np.unique(labels):
        positions = np.flatnonzero(labels == label)
        if len(positions) < 2:
            continue
        count = min(len(positions) - 1, max(1, round(fraction * len(positions))))
        held.extend(rng.permutation(positions)[:count].tolist())
    return sorted(held)


def prepare_training(
    params: Params, train: TrainParams, manifest: dict, shard_dir: Path, head_path: Path
) -> TrainingRun:
    """``train`` is the resolved train section (method defaults filled in); ``shard_dir`` holds
    the shards ``manifest`` lists."""
    train_shards = shard_paths(manifest, shard_dir, "train")
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

    transform = train_input(
        hand_off, pre.image_size, pre.mean, pre.std, max(train.epochs, 1), train.mda, train.mda_schedule, train.resize
    )
    dataset = ShardIndex(train_shards, transform, num_classes=num_classes, seed=train.seed)
    how = resolved_validation(train, manifest)
    validation, samples = None, None
    if how != "none":
        eval_transform = eval_input(hand_off, pre.image_size, pre.mean, pre.std)
        validation, samples = validation_samples(how, train, manifest, shard_dir, dataset, eval_transform)

    head_source = initialise_head(model, params, train, classnames, train_shards, head_path, device, hand_off, samples)
    trained_counts = train_counts if samples is None else class_counts(dataset, samples, num_classes)
    loss = build_loss(train.loss, trained_counts, tau=train.tau, scale=params.model.scale)

    fingerprint = run_fingerprint(
        model=model_cfg.to_dict(),
        # the validation params go in resolved (auto and the mode it picks are the same run);
        # validation's batch size and workers change no result, as the train ones do not
        train=train.model_dump(
            exclude={
                "workers",
                "verify_checksums",
                "device",
                "input",
                "prefetch",
                "persistent_workers",
                "validation",
                "val_fraction",
            }
        ),
        validation=validation_fingerprint(how, train, manifest),
        input=hand_off,
        code=code_fingerprint(),
        head_init=params.model.head_init,
        head_source=head_source,
        shards=[s["sha256"] for s in manifest["splits"]["train"]["shards"]],
    )
    config = RunConfig(
        epochs=train.epochs,
        lr=train.lr,
        batch_size=train.batch_size,
        micro_batch=train.micro_batch,
        weight_decay=train.weight_decay,
        momentum=train.momentum,
        workers=train.workers,
        seed=train.seed,
        deterministic=train.deterministic,
        device=train.device,
        precision=train.precision,
        compile=train.compile,
        prefetch=train.prefetch,
        persistent_workers=train.persistent_workers,
        keep=train.keep,
        fingerprint=fingerprint,
    )
    return TrainingRun(model, dataset, loss, config, dist, manifest, train, validation, samples)


def validation_samples(
    how: str,
    train: TrainParams,
    manifest: dict,
    shard_dir: Path,
    dataset: ShardIndex,
    transform,
) -> tuple[Validation, Optional[list[int]]]:
    """The :class:`Validation` of mode ``how`` (``val`` or ``holdout``, test-transformed by ``transform``)
    and the indices of ``dataset``, the training shards, left to train on (None: all)."""
    common = dict(
        train_counts=manifest["splits"]["train"]["class_counts"],
        batch_size=train.micro_batch,
        workers=train.workers,
        prefetch=train.prefetch,
    )
    num_classes = len(manifest["classnames"])
    if how == "val":
        val_shards = ShardIndex(shard_paths(manifest, shard_dir, "val"), transform, num_classes=num_classes)
        return Validation(val_shards, **common), None
    held = holdout_indices(dataset.labels, train.val_fraction, train.seed)
    if not held:
        raise DataError(
            f"train.validation is 'holdout' but no class has 2 training images to hold one out of "
            f"({len(dataset)} images)"
        )
    kept = sorted(set(range(len(dataset))) - set(held))
    return Validation(ShardIndex(dataset.paths, transform, num_classes=num_classes), subset=held, **common), kept


def class_counts(dataset: ShardIndex, samples: Sequence[int], num_classes: int) -> list[int]:
    """Training images per class among ``samples``: the prior of the logit-adjusted (and other) losses."""
    counts = Counter(dataset.samples[i].label for i in samples)
    return [counts[c] for c in range(num_classes)]


def validation_fingerprint(how: str, train: TrainParams, manifest: dict) -> Optional[dict]:
    """What the validation of a run depends on: its mode and its samples."""
    if how == "none":
        return None
    if how == "holdout":
        return {"holdout": train.val_fraction}
    return {"val": [s["sha256"] for s in manifest["splits"]["val"]["shards"]]}


def initialise_head(
    model: LiftModel,
    params: Params,
    train: TrainParams,
    classnames: list[str],
    train_shards: Sequence[Path],
    head_path: Path,
    device: torch.device,
    hand_off: str,
    samples: Optional[Sequence[int]] = None,
) -> str:
    """Set the head's starting weights; return a string identifying where they came from.

    ``device`` and ``hand_off`` are the run's (this rank's GPU under torchrun); ``samples``
    the training samples (None: all), so that a hold-out never informs the head."""
    if train.method == "coop":  # the text classifier: class prompts through the text tower, nothing to load
        model.head.set_classnames(classnames)
        return f"text:{model.head.template}"
    how = "zero-shot" if train.method == "zs" else params.model.head_init
    if how in ("semantic", "zero-shot"):
        fingerprint = backbone_fingerprint(model.config.name, model.config.pretrained, model.config.seed)
        text_init = load_text_init(head_path, classnames, fingerprint)
        key = "text_features" if how == "zero-shot" else "weight"
        model.init_head(text_init[key], source=str(head_path))
        return f"{how}:{sha256_file(head_path)}"
    if how == "random":
        return "random"
    features, labels = init_features(model, train_shards, len(classnames), train, device, hand_off, samples)
    weights = class_mean_weights if how == "class_mean" else linear_probe_weights
    model.init_head(weights(features, labels, len(classnames)), source=how)
    return how


def init_features(
    model: LiftModel,
    train_shards: Sequence[Path],
    num_classes: int,
    train: TrainParams,
    device: torch.device,
    hand_off: str,
    samples: Optional[Sequence[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image features of up to 100 training images (of ``samples``, None: all) per class.

    Seen as the reference's ``transform_plain`` sees them: the short side resized to the
    resolution (no expand), then the centre crop.
    """
    pre = model.preprocess
    plain = eval_input(hand_off, pre.image_size, pre.mean, pre.std, expand=PLAIN_EXPAND)
    dataset = ShardIndex(train_shards, plain, num_classes)
    generator = torch.Generator().manual_seed(train.seed)
    allowed = None if samples is None else set(samples)
    by_class: dict[int, list[int]] = {}
    for i in torch.randperm(len(dataset), generator=generator).tolist():
        if allowed is not None and i not in allowed:
            continue
        picked = by_class.setdefault(dataset.samples[i].label, [])
        if len(picked) < INIT_IMAGES_PER_CLASS:
            picked.append(i)
    indices = sorted(i for picked in by_class.values() for i in picked)
    return predict_features(model, dataset, indices, train.micro_batch, train.workers, device, train.precision)


def finish_training(run: TrainingRun, out: Path) -> None:
    run.model.to("cpu")
    save_checkpoint(
        out,
        run.model,
        run.model.config,
        extra={
            "method": run.train.method,
            "classnames": run.manifest["classnames"],
            "train_counts": run.manifest["splits"]["train"]["class_counts"],
            "epochs": run.config.epochs,
            "run_fingerprint": run.config.fingerprint,
            "keep": run.config.keep,
        },
    )
    print(f"train: trainable weights → {out}")
