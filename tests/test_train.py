"""The training loop on the tiny random ViT: determinism, learning, resume, accumulation, DDP, inference.

Every run trains 4 classes x 12 images (batch 16, micro-batch 8, 2 epochs) on CPU.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import time
import traceback
from pathlib import Path

import pytest
import torch
from shard_tars import write_shards
from train_kit import (  # noqa: F401  (one_thread: autouse fixture)
    CPU,
    EPOCHS,
    NUM_CLASSES,
    PER_CLASS,
    CountingLoss,
    assert_bitwise_equal,
    curves,
    make_dataset,
    make_model,
    max_difference,
    one_thread,
    preprocess,
    run_config,
    train,
)

from liftplus.data.transforms import test_transform as eval_transform
from liftplus.data.transforms import tte_transform
from liftplus.errors import CheckpointError, TrainingError
from liftplus.evaluation.inference import predict_features, predict_logits
from liftplus.runtime import distributed_from_env
from liftplus.training.loop import Interrupted, StopRequest, fit, trainable_state


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[Path]:
    return write_shards(tmp_path_factory.mktemp("shards"), NUM_CLASSES, PER_CLASS, per_shard=20)


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    """One uninterrupted run (micro 8 x 2 per step): its model, logs, weights and state file."""
    state = tmp_path_factory.mktemp("reference") / "state.pt"
    initial = trainable_state(make_model())
    model, logs = train(shards, state)
    return {"model": model, "logs": logs, "weights": trainable_state(model), "initial": initial, "state": state}


@pytest.fixture(scope="module")
def one_micro_batch_weights(shards, tmp_path_factory):
    """The same run as ``reference`` with each step of 16 computed in one micro-batch."""
    model, _ = train(shards, tmp_path_factory.mktemp("micro16") / "state.pt", micro_batch=16)
    return trainable_state(model)


# --- determinism and learning ----------------------------------------------------------------


def test_same_config_gives_bitwise_identical_weights(shards, reference, tmp_path):
    moved = [k for k in reference["weights"] if not torch.equal(reference["weights"][k], reference["initial"][k])]
    assert set(moved) == set(reference["weights"]), "every trainable tensor should have been trained"
    model, logs = train(shards, tmp_path / "state.pt")
    assert_bitwise_equal(trainable_state(model), reference["weights"])
    assert [log.loss for log in logs] == [log.loss for log in reference["logs"]]


def test_a_different_seed_gives_different_weights(shards, reference, tmp_path):
    model, _ = train(shards, tmp_path / "state.pt", seed=1)
    assert max_difference(trainable_state(model), reference["weights"]) > 1e-3


def test_loss_falls_and_accuracy_rises_on_learnable_data(shards, reference):
    first, last = reference["logs"]
    assert (first.epoch, last.epoch) == (1, 2)
    assert last.loss < 0.5 * first.loss and last.accuracy > first.accuracy
    assert (first.lr, last.lr) == pytest.approx((0.02, 0.01))  # cosine over 2 epochs, stepped per epoch

    pre = preprocess()
    dataset = make_dataset(shards, eval_transform(pre.image_size, pre.mean, pre.std))
    accuracy = {}
    for name, model in (("before", make_model()), ("after", reference["model"])):
        logits, labels = predict_logits(model, dataset, 16, 0, CPU, progress=False)
        assert labels.tolist() == [i % NUM_CLASSES for i in range(len(dataset))]
        accuracy[name] = (logits.argmax(1) == labels).float().mean().item()
    assert accuracy["after"] >= 0.75 and accuracy["after"] > accuracy["before"] + 0.25, accuracy


# --- resume --------------------------------------------------------------------------------


def test_stop_mid_epoch_then_resume_gives_the_uninterrupted_weights(shards, reference, tmp_path):
    state_path = tmp_path / "state.pt"
    stop = StopRequest()

    def request_stop(calls, loss):
        if calls == 3:  # during the second optimizer step of epoch 1; the loop stops after it
            stop.signal = signal.SIGTERM
        return loss

    with pytest.raises(Interrupted, match="epoch 1, batch 4"):
        train(shards, state_path, CountingLoss(request_stop), stop=stop)
    state = torch.load(state_path, weights_only=True)
    assert (state["epoch"], state["step"], state["fingerprint"]) == (0, 2, "test-run")

    resumed, logs = train(shards, state_path)
    assert [log.epoch for log in logs] == [1, 2]
    assert_bitwise_equal(trainable_state(resumed), reference["weights"])


def test_killed_after_an_epoch_resumes_from_its_checkpoint(shards, reference, tmp_path):
    state_path = tmp_path / "state.pt"

    def killed(log):
        raise KeyboardInterrupt  # as if the process died right after the epoch's state was written

    with pytest.raises(KeyboardInterrupt):
        train(shards, state_path, on_epoch=killed)
    state = torch.load(state_path, weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 0)

    replayed = []
    resumed, logs = train(shards, state_path, workers=2, on_epoch=replayed.append)  # workers are not part of the run
    assert logs == replayed and [log.epoch for log in logs] == [1, 2]
    assert curves(logs) == curves(reference["logs"])
    assert_bitwise_equal(trainable_state(resumed), reference["weights"])
    assert torch.load(state_path, weights_only=True)["scheduler"]["last_epoch"] == EPOCHS


def test_finished_state_is_reused_but_another_runs_state_is_ignored(shards, reference, tmp_path):
    state_path = tmp_path / "state.pt"
    shutil.copy(reference["state"], state_path)

    replayed = []
    same_run, logs = train(shards, state_path, on_epoch=replayed.append)
    assert logs == replayed == reference["logs"]  # nothing left to train: weights and curves come from the state
    assert_bitwise_equal(trainable_state(same_run), reference["weights"])

    other_run, logs = train(shards, state_path, fingerprint="another-run")
    assert [log.epoch for log in logs] == [1, 2]  # started over
    assert_bitwise_equal(trainable_state(other_run), reference["weights"])
    assert torch.load(state_path, weights_only=True)["fingerprint"] == "another-run"


def test_unreadable_state_is_a_checkpoint_error(shards, tmp_path):
    state_path = tmp_path / "state.pt"
    state_path.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"state\.pt: corrupt or not a training state"):
        train(shards, state_path)
    torch.save({"format": "something-else"}, state_path)
    with pytest.raises(CheckpointError, match=r"state\.pt: not a liftplus training state"):
        train(shards, state_path)


# --- accumulation, errors ------------------------------------------------------------------


def test_gradient_accumulation_matches_one_big_batch(shards, reference, one_micro_batch_weights, tmp_path):
    # (mean(l[:8]) + mean(l[8:])) / 2 == mean(l[:16]): equal in exact arithmetic (all micro-batches full)
    assert max_difference(reference["weights"], one_micro_batch_weights) < 1e-5
    small_steps, _ = train(shards, tmp_path / "state.pt", batch_size=8)  # a step per micro-batch
    assert max_difference(trainable_state(small_steps), one_micro_batch_weights) > 1e-3


def test_nan_loss_is_an_error_naming_epoch_and_batch(shards, tmp_path):
    def nan_on_eighth(calls, loss):
        return loss * float("nan") if calls == 8 else loss

    with pytest.raises(TrainingError, match=r"loss is nan at epoch 2, batch 2"):
        train(shards, tmp_path / "state.pt", CountingLoss(nan_on_eighth))
    assert torch.load(tmp_path / "state.pt", weights_only=True)["epoch"] == 1  # epoch 1 was saved


def test_batch_not_a_multiple_of_micro_batch_is_an_error(shards, tmp_path):
    with pytest.raises(TrainingError, match="batch_size 12 must be a multiple of micro_batch 8"):
        train(shards, tmp_path / "state.pt", batch_size=12)
    assert not (tmp_path / "state.pt").exists()


# --- inference -----------------------------------------------------------------------------


def test_predict_logits_averages_the_five_crops(shards, reference):
    model = reference["model"]
    pre = model.preprocess
    dataset = make_dataset(shards, tte_transform(pre.image_size, pre.mean, pre.std))
    logits, labels = predict_logits(model, dataset, 5, 0, CPU, progress=False)
    assert logits.shape == (len(dataset), NUM_CLASSES)
    assert labels.tolist() == dataset.labels
    model.eval()
    with torch.no_grad():
        for i in range(0, len(dataset), 4):
            crops, _ = dataset[(0, i)]
            assert crops.shape == (5, 3, pre.image_size, pre.image_size)
            per_crop = model(crops)
            assert (per_crop - per_crop[4]).abs().max() > 1e-3  # the crops do disagree
            assert torch.allclose(logits[i], per_crop.mean(dim=0), atol=1e-5)


def test_predict_features_of_a_subset(shards, reference):
    model = reference["model"]
    pre = model.preprocess
    dataset = make_dataset(shards, eval_transform(pre.image_size, pre.mean, pre.std))
    subset = [3, 17, 30, 41]
    features, labels = predict_features(model, dataset, subset, 3, 0, CPU, progress=False)
    assert labels.tolist() == [dataset.labels[i] for i in subset]
    model.eval()
    with torch.no_grad():
        expected = model.features(torch.stack([dataset[(0, i)][0] for i in subset]))
    assert features.shape == (4, model.feature_dim)
    assert torch.allclose(features, expected, atol=1e-5)


# --- DDP -------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, port: int, shards: list[Path], out: Path, stop_rank1_at_call: int | None) -> None:
    """One rank, in a forked child: the environment torchrun sets, then what the train stage does."""
    try:
        os.environ.update(
            WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
        )
        torch.set_num_threads(1)
        dist_info = distributed_from_env()
        stop = StopRequest()

        def maybe_stop(calls, loss):
            if rank == 1 and calls == stop_rank1_at_call:
                stop.signal = signal.SIGTERM  # only this rank is told
            return loss

        model = make_model()
        on_epoch_calls, summary = [], {}
        try:
            logs = fit(
                model,
                make_dataset(shards),
                CountingLoss(maybe_stop),
                run_config(),
                out / "state.pt",
                on_epoch=on_epoch_calls.append,
                dist_info=dist_info,
                stop=stop,
                progress=False,
            )
            summary["losses"] = [log.loss for log in logs]
        except Interrupted as exc:
            summary["interrupted"] = str(exc)
        summary["on_epoch_calls"] = len(on_epoch_calls)
        torch.save(trainable_state(model), out / f"rank{rank}.pt")
        (out / f"rank{rank}.json").write_text(json.dumps(summary))
        torch.distributed.destroy_process_group()
    except BaseException:
        (out / f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def run_two_ranks(shards: list[Path], out: Path, stop_rank1_at_call: int | None = None) -> list[dict]:
    """Fork 2 gloo ranks running the reference run; their summaries (losses or interruption)."""
    ctx = multiprocessing.get_context("fork")
    port = _free_port()
    ranks = [ctx.Process(target=_ddp_rank, args=(rank, port, shards, out, stop_rank1_at_call)) for rank in range(2)]
    for proc in ranks:
        proc.start()
    try:
        deadline = time.monotonic() + 120
        while any(p.is_alive() for p in ranks) and time.monotonic() < deadline:
            if any(p.exitcode is not None for p in ranks):  # one rank is done: the other must follow soon
                deadline = min(deadline, time.monotonic() + 20)
            time.sleep(0.1)
    finally:
        for proc in ranks:
            if proc.is_alive():
                proc.kill()
                proc.join()
    for rank, proc in enumerate(ranks):
        error = out / f"rank{rank}.error"
        assert proc.exitcode == 0, f"rank {rank} exit {proc.exitcode}:\n" + (
            error.read_text() if error.exists() else ""
        )
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


needs_fork = pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")


@pytest.mark.slow
@needs_fork
def test_ddp_on_cpu_two_ranks_agree_and_match_one_process(shards, one_micro_batch_weights, tmp_path):
    """2 gloo ranks x micro-batch 8 make the same steps of 16 as one process with micro-batch 16.

    The ranks are forked (not fresh interpreters) so they do not pay torch's import time again.
    """
    logs = run_two_ranks(shards, tmp_path)
    trained = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in range(2)]
    assert_bitwise_equal(trained[0], trained[1])
    assert max_difference(trained[0], one_micro_batch_weights) < 1e-5

    assert [len(log["losses"]) for log in logs] == [EPOCHS, EPOCHS]
    assert logs[0]["losses"] != logs[1]["losses"]  # each rank trained on its own half
    assert (logs[0]["on_epoch_calls"], logs[1]["on_epoch_calls"]) == (EPOCHS, 0)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (EPOCHS, 0)
    assert_bitwise_equal(state["trainable"], trained[0])


@pytest.mark.slow
@needs_fork
def test_ddp_stop_on_one_rank_stops_all_and_resumes_on_one_process(shards, reference, tmp_path):
    logs = run_two_ranks(shards, tmp_path, stop_rank1_at_call=2)
    assert "a signal to another rank at epoch 1, batch 2" in logs[0]["interrupted"]
    assert "signal 15 at epoch 1, batch 2" in logs[1]["interrupted"]
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (0, 2)  # two steps of 16, however many processes made them

    resumed, epochs = train(shards, tmp_path / "state.pt")  # one process, micro 8 x 2: starts at micro-batch 4
    assert [log.epoch for log in epochs] == [1, 2]
    assert max_difference(trainable_state(resumed), reference["weights"]) < 1e-5


@pytest.mark.slow
def test_compiled_step_gives_the_eager_loss(shards, reference, tmp_path):
    """``train.compile``: torch.compile (inductor, a C++ compiler on CPU) trains the same model."""
    model, logs = train(shards, tmp_path / "state.pt", compile=True, epochs=EPOCHS)
    assert [log.loss for log in logs] == pytest.approx([log.loss for log in reference["logs"]], rel=1e-4)
    assert max_difference(trainable_state(model), reference["weights"]) < 1e-4


def test_code_fingerprint_follows_the_source(tmp_path):
    """A state is resumed only by the code that wrote it: an edit of the training code changes the
    digest, an edit of code training never runs (the command line) does not."""
    import subprocess
    import sys

    from liftplus.training.code_closure import code_fingerprint

    copy = tmp_path / "liftplus"
    shutil.copytree(
        Path(__file__).resolve().parents[1] / "liftplus", copy, ignore=shutil.ignore_patterns("__pycache__")
    )

    def digest_of_copy() -> str:
        script = "import liftplus.training.code_closure as t; print(t.__file__, t.code_fingerprint())"
        out = subprocess.run(
            [sys.executable, "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(tmp_path)},
            check=True,
        ).stdout.split()
        assert out[0].startswith(str(copy))
        return out[1]

    assert digest_of_copy() == code_fingerprint()
    cli = copy / "cli.py"
    cli.write_text(cli.read_text() + "\n# an edit\n")
    assert digest_of_copy() == code_fingerprint()
    losses = copy / "training" / "losses.py"
    losses.write_text(losses.read_text() + "\n# an edit\n")
    assert digest_of_copy() != code_fingerprint()


def test_class_mean_and_probe_inits_see_images_as_the_reference_transform_plain(shards, monkeypatch):
    """The reference's init dataset: Resize(res) + CenterCrop(res), not the test transform's res + res // 7."""
    from PIL import Image

    from liftplus.data.images import open_image
    from liftplus.params import TrainParams
    from liftplus.training import run as training_run

    seen = {}

    def capture(model, dataset, indices, *args, **kwargs):
        seen.update(dataset=dataset, indices=indices)
        return torch.zeros(len(indices), 64), torch.zeros(len(indices), dtype=torch.long)

    monkeypatch.setattr(training_run, "predict_features", capture)
    model = make_model()
    training_run.init_features(model, shards, NUM_CLASSES, TrainParams(workers=0), CPU, "float")
    dataset, index = seen["dataset"], seen["indices"][0]
    got, _ = dataset[(0, index)]

    sample = dataset.samples[index]
    with open(shards[sample.shard], "rb") as f:
        f.seek(sample.offset)
        image = open_image(f.read(sample.size), sample.ext).convert("RGB")
    pre = model.preprocess
    res = pre.image_size
    assert min(image.size) > res  # the shards' 36-px images: a resize to res is not the identity
    plain = image.resize((res, res), Image.Resampling.BICUBIC)  # square images: Resize(res) + CenterCrop(res)
    expected = torch.tensor(list(plain.getdata()), dtype=torch.uint8).view(res, res, 3).permute(2, 0, 1)
    assert torch.equal(got, expected)  # uint8 crops; the batch is normalised later, in the worker
