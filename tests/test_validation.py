"""Validation during training: per-epoch val curves, the best epoch, ``train.keep``, the hold-out, resume.

The loop-level tests train 4 classes x 12 images (val: 4 x 3) on CPU like tests/test_train.py; the
stage-level ones shard a tiny image-folder tree with train/, val/ and test/ folders and run the
train stage in this process.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch
from faultkit import invoke, train_args, write_params
from shard_tars import class_image, write_shards
from train_kit import CountingLoss, assert_bitwise_equal, make_model, one_thread, preprocess, run_config  # noqa: F401

from liftplus.data.loader import ShardIndex
from liftplus.data.transforms import test_transform as eval_transform
from liftplus.data.transforms import train_transform
from liftplus.errors import DataError, TrainingError
from liftplus.params import TrainParams, load_params, resolved_train
from liftplus.training.loop import Interrupted, StopRequest, Validation, best_epoch, fit, trainable_state
from liftplus.training.run import holdout_indices, prepare_training, resolved_validation

NUM_CLASSES, EPOCHS = 4, 3
METRICS = ("acc", "acc_mean_class", "acc_many", "acc_medium", "acc_few")


# --- the loop -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("val-shards")
    return write_shards(root, NUM_CLASSES, 12, per_shard=20), write_shards(root, NUM_CLASSES, 3, split="val")


def validation(val_shards) -> Validation:
    pre = preprocess()
    dataset = ShardIndex(val_shards, eval_transform(pre.image_size, pre.mean, pre.std), num_classes=NUM_CLASSES)
    return Validation(dataset, train_counts=[12] * NUM_CLASSES, batch_size=5)


def training_data(train_shards) -> ShardIndex:
    pre = preprocess()
    transform = train_transform(pre.image_size, pre.mean, pre.std, EPOCHS)
    return ShardIndex(train_shards, transform, num_classes=NUM_CLASSES, seed=0)


class SampleCounter(torch.nn.Module):
    """``loss``, counting the samples it is computed on."""

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        self.loss, self.samples = loss, 0

    def forward(self, logits, labels):
        self.samples += labels.numel()
        return self.loss(logits, labels)


def train(shards, state_path: Path, validate: bool = True, **overrides):
    """Fit a fresh model for EPOCHS epochs; return it, its logs and the weights after each epoch."""
    train_shards, val_shards = shards
    model = make_model()
    after_epoch: dict[int, dict] = {}
    on_epoch = overrides.pop("on_epoch", None)

    def record(log):
        after_epoch[log.epoch] = trainable_state(model)
        if on_epoch is not None:
            on_epoch(log)

    hooks = {k: overrides.pop(k) for k in ("stop", "loss") if k in overrides}
    logs = fit(
        model,
        training_data(train_shards),
        hooks.pop("loss", torch.nn.CrossEntropyLoss()),
        run_config(epochs=EPOCHS, **overrides),
        state_path,
        on_epoch=record,
        progress=False,
        validation=validation(val_shards) if validate else None,
        **hooks,
    )
    return model, logs, after_epoch


@pytest.fixture(scope="module")
def validated(shards, tmp_path_factory):
    state = tmp_path_factory.mktemp("validated") / "state.pt"
    model, logs, after_epoch = train(shards, state)
    return {"weights": trainable_state(model), "logs": logs, "after_epoch": after_epoch, "state": state}


def test_every_epoch_is_scored_and_the_best_is_recorded(validated):
    logs = validated["logs"]
    assert [log.epoch for log in logs] == [1, 2, 3]
    for log in logs:
        assert set(log.validation) == set(METRICS)
        # 12 training images a class: every class is "few"; the many and medium groups have no class
        assert log.validation["acc_many"] is None and log.validation["acc_medium"] is None
        assert log.validation["acc_few"] == log.validation["acc_mean_class"]
        right = log.validation["acc"] * 12 / 100  # of the 12 val images
        assert 0 <= right <= 12 and right == pytest.approx(round(right))
    # the val images repeat training images (write_shards draws them by index): every epoch scores
    # 100 and the tie goes to the earliest epoch, so "best" is not the last one here
    assert [log.validation["acc_mean_class"] for log in logs] == [100.0] * EPOCHS
    best = best_epoch(logs)
    assert best.epoch == 1
    state = torch.load(validated["state"], weights_only=True)
    assert (state["best"]["epoch"], state["best"]["score"]) == (1, 100.0)
    assert_bitwise_equal(state["best"]["trainable"], validated["after_epoch"][best.epoch])
    assert [entry["validation"] for entry in state["history"]] == [log.validation for log in logs]


def test_validation_changes_no_weight(shards, validated, tmp_path):
    """keep: last (the default): the same weights and training curves as a run that never validates."""
    model, logs, _ = train(shards, tmp_path / "state.pt", validate=False)
    assert_bitwise_equal(trainable_state(model), validated["weights"])
    assert [(log.loss, log.accuracy) for log in logs] == [(log.loss, log.accuracy) for log in validated["logs"]]
    assert all(log.validation is None for log in logs)
    assert torch.load(tmp_path / "state.pt", weights_only=True)["best"] is None


def test_keep_best_ends_with_the_best_epochs_weights(shards, validated, tmp_path):
    model, logs, _ = train(shards, tmp_path / "state.pt", keep="best", fingerprint="keep-best")
    assert best_epoch(logs).epoch == 1
    assert_bitwise_equal(trainable_state(model), validated["after_epoch"][1])
    assert not all(torch.equal(a, b) for a, b in zip(trainable_state(model).values(), validated["weights"].values()))


def test_keep_best_without_validation_is_refused(shards, tmp_path):
    with pytest.raises(TrainingError, match="keep is 'best' but the run has no validation"):
        train(shards, tmp_path / "state.pt", validate=False, keep="best")
    with pytest.raises(ValueError, match="keep 'best' needs validation"):
        TrainParams(keep="best", validation="none")


def test_resumed_runs_keep_the_same_best_epoch(shards, validated, tmp_path):
    """Killed after epoch 1, then stopped mid-epoch 3, then run to the end: the uninterrupted run's best."""
    state_path = tmp_path / "state.pt"

    def killed(log):
        if log.epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(shards, state_path, keep="best", on_epoch=killed)
    stop = StopRequest()

    def stop_in_epoch_3(calls, loss):
        if calls == 10:  # epoch 2 makes micro-batches 1-6 of this run, epoch 3 starts at 7
            stop.signal = signal.SIGTERM
        return loss

    with pytest.raises(Interrupted, match="epoch 3"):
        train(shards, state_path, keep="best", stop=stop, loss=CountingLoss(stop_in_epoch_3))
    model, logs, _ = train(shards, state_path, keep="best")
    assert [log.validation for log in logs] == [log.validation for log in validated["logs"]]
    assert best_epoch(logs).epoch == best_epoch(validated["logs"]).epoch
    assert_bitwise_equal(trainable_state(model), validated["after_epoch"][best_epoch(logs).epoch])


def test_holdout_rule_per_class():
    labels = [0] * 12 + [1] * 8 + [2] * 5 + [3] * 3 + [4]
    held = holdout_indices(labels, 0.1, seed=0)
    per_class = [sum(labels[i] == c for i in held) for c in range(5)]
    assert per_class == [1, 1, 1, 1, 0]  # max(1, round(0.1 n)), at least one image left to train on
    assert holdout_indices(labels, 0.1, seed=0) == held and holdout_indices(labels, 0.1, seed=1) != held
    assert [sum(labels[i] == c for i in holdout_indices(labels, 0.5, 0)) for c in range(5)] == [6, 4, 2, 2, 0]


# --- the stage ------------------------------------------------------------------------------

TRAIN_COUNTS, VAL_PER_CLASS, TEST_PER_CLASS = [12, 8, 5, 3], 3, 2
CLASSES = ["red", "green", "blue", "yellow"]


def image_tree(root: Path, with_val: bool) -> Path:
    """``root/{train,val,test}/<class>/<n>.png``, each image unique (class colour, noise by index)."""
    splits = {"train": TRAIN_COUNTS, "test": [TEST_PER_CLASS] * 4}
    if with_val:
        splits["val"] = [VAL_PER_CLASS] * 4
    for offset, (split, counts) in enumerate(splits.items()):
        for label, (name, count) in enumerate(zip(CLASSES, counts)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for n in range(count):
                (folder / f"{n}.png").write_bytes(class_image(label, 100 * offset + n))
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Two shard sets of the same tree, with and without its val/ folder, and their head init."""
    root = tmp_path_factory.mktemp("val-stage")
    out = {"root": root}
    for name, with_val in (("with_val", True), ("no_val", False)):
        tree = image_tree(root / f"raw-{name}", with_val)
        params = write_params(
            root / f"params-{name}.yaml",
            data={"source": "imagefolder", "root": str(tree), "imbalance_ratio": 1},
            train={"epochs": EPOCHS, "batch_size": 8, "micro_batch": 4, "workers": 0, "validation": "auto"},
        )  # the schema's default; the demo's params say holdout
        done = invoke("shard", "--params", params, "--out", root / name)
        assert done.code == 0, done.stderr
        out[name] = (params, root / name)
    done = invoke("init_head", "--params", out["with_val"][0], "--shards", root / "with_val", "--out", root / "head.pt")
    assert done.code == 0, done.stderr
    out["head"] = root / "head.pt"
    return out


def run_train(project, data: str, name: str, **train) -> Path:
    """The train stage on ``data``'s shards with ``train`` params; its output folder."""
    params, shards = project[data]
    if train:
        params = write_params(project["root"] / f"params-{name}.yaml", params, train=train)
    out = project["root"] / name
    done = invoke("train", *train_args(params, shards, project["head"], out))
    assert done.code == 0, done.stderr[-2000:]
    (out / "stdout.txt").write_text(done.stdout)
    return out


def curve(out: Path, name: str) -> list[dict]:
    with open(out / "live" / "plots" / "metrics" / f"{name}.tsv") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["state"]


@pytest.fixture(scope="module")
def default_run(project):
    return run_train(project, "with_val", "default")


def test_stage_logs_val_curves_and_the_best_epoch(default_run):
    out = default_run
    metrics = json.loads((out / "live" / "metrics.json").read_text())
    state = torch.load(out / "state" / "last.pt", weights_only=True)
    scores = [entry["validation"]["acc_mean_class"] for entry in state["history"]]
    best = scores.index(max(scores)) + 1
    assert set(metrics) == {"fit", "val", "step"} and metrics["step"] == EPOCHS
    assert set(metrics["fit"]) == {"loss", "acc"}  # no lr, no throughput, no step loss in the summary
    # every class has under 20 training images: "few" only; the empty groups are not logged
    assert set(metrics["val"]) == {"acc", "acc_mean_class", "acc_few", "best_epoch", "best_acc_mean_class"}
    assert metrics["val"]["best_epoch"] == best == state["best"]["epoch"]
    assert metrics["val"]["best_acc_mean_class"] == round(max(scores), 2)

    for name in ("fit/loss", "fit/acc", "val/acc", "val/acc_mean_class", "val/acc_few"):
        rows = curve(out, name)
        assert [int(row["step"]) for row in rows] == [1, 2, 3], name
    assert [float(r["acc_mean_class"]) for r in curve(out, "val/acc_mean_class")] == [round(s, 2) for s in scores]
    assert all(len(r["loss"].split(".")[-1]) <= 4 for r in curve(out, "fit/loss"))
    assert not (out / "live" / "plots" / "metrics" / "val" / "acc_many.tsv").exists()
    assert not (out / "live" / "plots" / "metrics" / "train").exists()

    steps = curve(out, "fit/step_loss")  # 28 images in steps of 8: 4 optimizer steps an epoch
    assert [int(row["step"]) for row in steps] == list(range(1, 4 * EPOCHS + 1))
    assert [float(row["step_loss"]) for row in steps] == [round(loss, 4) for loss in state["step_losses"]]
    assert f"best epoch {best}/{EPOCHS}" in (out / "stdout.txt").read_text()


def test_stage_keep_best_writes_the_best_epochs_weights(project, default_run):
    out = run_train(project, "with_val", "best", keep="best")
    state = torch.load(out / "state" / "last.pt", weights_only=True)
    kept = weights(out / "model" / "adapter.pt")
    assert_bitwise_equal(kept, state["best"]["trainable"])
    assert torch.load(out / "model" / "adapter.pt", weights_only=True)["extra"]["keep"] == "best"
    same_as_last = all(torch.equal(kept[k], v) for k, v in weights(default_run / "model" / "adapter.pt").items())
    assert same_as_last == (state["best"]["epoch"] == EPOCHS)


def test_stage_default_without_val_split_trains_as_before(project):
    """No val split: the default trains and writes exactly what a run with validation off does."""
    default = run_train(project, "no_val", "no-val-default")
    off = run_train(project, "no_val", "no-val-off", validation="none")
    assert_bitwise_equal(weights(default / "model" / "adapter.pt"), weights(off / "model" / "adapter.pt"))
    assert "no validation" in (default / "stdout.txt").read_text()
    assert set(json.loads((default / "live" / "metrics.json").read_text())) == {"fit", "step"}
    assert not (default / "live" / "plots" / "metrics" / "val").exists()


def test_holdout_leaves_its_slice_out_of_training(project):
    params_file, shards = project["with_val"]
    manifest = json.loads((shards / "manifest.json").read_text())
    params = load_params(params_file)

    def images_per_epoch(validation: str) -> tuple[int, object]:
        train = resolved_train(params.train).model_copy(update={"validation": validation, "epochs": 1})
        run = prepare_training(params, train, manifest, shards, project["head"])
        counter = SampleCounter(run.loss)
        fit(
            run.model,
            run.dataset,
            counter,
            run.config,
            project["root"] / f"holdout-{validation}.pt",
            progress=False,
            validation=run.validation,
            samples=run.samples,
        )
        return counter.samples, run

    all_images, off = images_per_epoch("none")
    kept_images, holdout = images_per_epoch("holdout")
    held = holdout.validation.subset
    assert all_images == sum(TRAIN_COUNTS) and off.validation is None
    assert len(held) == 4  # one of each class: max(1, round(0.1 * n))
    assert kept_images == all_images - len(held)
    assert sorted(held + holdout.samples) == list(range(sum(TRAIN_COUNTS)))
    assert off.config.fingerprint != holdout.config.fingerprint


def test_val_asked_for_shards_without_a_val_split_is_an_error(project):
    manifest = json.loads((project["no_val"][1] / "manifest.json").read_text())
    assert resolved_validation(TrainParams(), manifest) == "none"
    assert resolved_validation(TrainParams(validation="holdout"), manifest) == "holdout"
    with pytest.raises(DataError, match="train.validation is 'val' but the shards have no val split"):
        resolved_validation(TrainParams(validation="val"), manifest)
    with_val = json.loads((project["with_val"][1] / "manifest.json").read_text())
    assert resolved_validation(TrainParams(), with_val) == "val"


def test_zero_shot_stage_writes_the_log_folders_dvc_declares(project):
    """Zero-shot trains no epoch and logs no curve; the outputs dvc.yaml declares exist all the same."""
    out = run_train(project, "no_val", "zero-shot", method="zs", epochs=None, validation="none")
    assert (out / "live" / "plots" / "metrics").is_dir()
    assert (out / "live" / "metrics.json").is_file()
    assert torch.load(out / "model" / "adapter.pt", weights_only=True)["extra"]["method"] == "zs"
