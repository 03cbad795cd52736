"""The training loop: SGD + cosine per epoch, gradient accumulation, AMP on CUDA, resume, DDP.

Read it top to bottom like nanoGPT's: set up the device and precision, the
optimizer and schedule, restore the last state if there is one, then loop
over epochs and micro-batches, stepping once per ``batch_size`` samples.
State is saved atomically at the end of each epoch (and when SIGINT/SIGTERM
asks us to stop), so an interrupted run resumes where it left off and ends
with the same weights as an uninterrupted one.

With a :class:`Validation`, each epoch ends with the model scored on it (test
transform, no TTE); the best epoch's weights are kept aside (CPU copy, in the
state too) and become the result with ``keep="best"``. The default keeps the
reference's result, the last epoch's weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from liftplus.checkpoint_file import first_non_finite
from liftplus.data.input_path import finish_batch
from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
from liftplus.errors import CheckpointError, TrainingError
from liftplus.evaluation.inference import run_inference
from liftplus.evaluation.metrics import classification_metrics
from liftplus.io import load_torch, save_torch
from liftplus.model.checkpoint import load_trainable_state
from liftplus.progress import Progress, eta_text
from liftplus.runtime import (
    Distributed,
    autocast_dtype,
    grad_scaler,
    init_distributed,
    pick_device,
    set_determinism,
)
from liftplus.training.step import NonFiniteLoss, train_step

STATE_FORMAT = "liftplus-train-state/2"


@dataclass
class RunConfig:
    """What the loop needs to know; ``fingerprint`` ties a saved state to its run."""

    epochs: int
    lr: float
    batch_size: int = 128
    micro_batch: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    workers: int = 2
    seed: int = 0
    deterministic: bool = True
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    prefetch: int = 4
    persistent_workers: bool = True
    keep: str = "last"
    """``last``: the last epoch's weights (the reference's); ``best``: the best validated epoch's."""
    fingerprint: str = ""


@dataclass
class EpochLog:
    epoch: int
    loss: float
    accuracy: float
    lr: float
    images_per_second: float
    seconds: float
    validation: Optional[dict[str, Optional[float]]] = None
    """:func:`validation_scores` after the epoch, when the run validates."""
    replayed: bool = field(default=False, compare=False)
    """True for an epoch trained before a resume, whose log came back from the saved state."""


@dataclass
class StepLog:
    step: int
    """Optimizer steps of the run so far, this one included (1-based, over all epochs)."""
    loss: float
    """The mean training loss of this step's micro-batches (rank 0's under DDP)."""
    replayed: bool = field(default=False, compare=False)


@dataclass
class Validation:
    """Samples scored after every epoch (``liftplus.training.run`` builds it from params)."""

    dataset: ShardIndex
    """With the test transform (centre crop, no TTE: it runs every epoch)."""
    train_counts: Sequence[int]
    """The training class counts: they set the many/medium/few groups, as evaluate's do."""
    subset: Optional[list[int]] = None
    """The dataset indices to score (a hold-out of the training shards); None: all of them."""
    batch_size: int = 128
    workers: int = 0
    prefetch: int = 4


BEST_BY = "acc_mean_class"
"""The validation score that picks the best epoch: the highest; a tie goes to the earliest epoch."""


@dataclass
class StopRequest:
    """Set by SIGINT/SIGTERM; the loop saves its state at the next optimizer step and stops."""

    signal: Optional[int] = None
    _previous: dict = field(default_factory=dict)

    def install(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        self.signal = signum


class Interrupted(Exception):
    """Training stopped on request after saving its state."""


def run_fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_state(
    path: Path,
    *,
    epoch: int,
    step: int,
    model: nn.Module,
    optimizer,
    scheduler,
    scaler,
    cfg: RunConfig,
    history: list[EpochLog],
    step_losses: Sequence[float] = (),
    best: Optional[dict] = None,
) -> None:
    """``step``: optimizer steps done in ``epoch``; unlike a micro-batch index it means the same
    samples whatever the number of processes, so a run may resume on another world size.

    ``step_losses`` (every optimizer step's loss so far) and ``best`` (the best validated
    epoch: ``{"epoch", "score", "trainable"}``) come back on resume, so a resumed run logs
    the whole step curve and keeps the same best epoch as an uninterrupted one."""
    state = {
        "format": STATE_FORMAT,
        "fingerprint": cfg.fingerprint,
        "epoch": epoch,
        "step": step,
        "trainable": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "history": [
            asdict(log, dict_factory=lambda items: {k: v for k, v in items if k != "replayed"}) for log in history
        ],
        "step_losses": list(step_losses),
        "best": best,
    }
    save_torch(state, path)


def load_state(path: Path, cfg: RunConfig) -> Optional[dict]:
    """The saved state of this same run, or None (a state of another run is ignored)."""
    if not path.is_file():
        return None
    state = load_torch(path, "training state", "; delete it to start over")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: not a liftplus training state; delete it to start over")
    if state.get("fingerprint") != cfg.fingerprint:
        return None
    return state


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in _unwrap(model).trainable_state_dict().items()}


def cpu_trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights in host memory: the best epoch's stay aside there, off the GPU."""
    return {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).trainable_state_dict().items()}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def stop_requested(stop: Optional[StopRequest], dist_info: Distributed, device: torch.device) -> bool:
    """Whether any rank was asked to stop: all ranks must stop at the same step, or the
    ones that go on wait forever in the next all-reduce (and rank 0 may never save)."""
    if stop is None:
        return False
    requested = stop.signal is not None
    if dist_info.world > 1:
        flag = torch.tensor([int(requested)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        requested = bool(flag.item())
    return requested


def fit(
    model: nn.Module,
    dataset: ShardIndex,
    loss_fn: nn.Module,
    cfg: RunConfig,
    state_path: Path,
    on_epoch: Optional[Callable[[EpochLog], None]] = None,
    dist_info: Optional[Distributed] = None,
    stop: Optional[StopRequest] = None,
    progress: bool = True,
    validation: Optional[Validation] = None,
    on_step: Optional[Callable[[StepLog], None]] = None,
    samples: Optional[Sequence[int]] = None,
) -> list[EpochLog]:
    """Train ``model``'s trainable parameters in place; return one log per epoch of the run.

    The logs of epochs (and steps) finished before a resume come from the saved
    state and are passed to ``on_epoch`` (``on_step``) first, so a logger started
    afresh still gets the whole run's curves (and a finished run, rerun, gets
    them all again). Progress shows as a bar on a terminal and as a plain line
    now and then elsewhere (:mod:`liftplus.progress`).

    ``samples``: the dataset indices to train on (None: all). ``validation``:
    scored on the main rank after every epoch; with ``cfg.keep == "best"`` the
    model ends with the best epoch's weights.
    """
    if cfg.epochs == 0:
        return []
    if cfg.keep == "best" and validation is None:
        raise TrainingError("train.keep is 'best' but the run has no validation samples to pick the best epoch by")
    dist_info = dist_info or Distributed()
    device = pick_device(cfg.device, dist_info)
    init_distributed(dist_info, device)
    set_determinism(cfg.seed, cfg.deterministic)
    amp_dtype = autocast_dtype(cfg.precision, device)

    accum_steps, remainder = divmod(cfg.batch_size, cfg.micro_batch * dist_info.world)
    if remainder or accum_steps == 0:
        raise TrainingError(
            f"train.batch_size {cfg.batch_size} must be a multiple of micro_batch {cfg.micro_batch}"
            f" x {dist_info.world} process(es)"
        )

    model.to(device)
    loss_fn.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        fused=True if device.type == "cuda" else None,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    scaler = grad_scaler(amp_dtype)

    start_epoch, start_step, history, step_losses, best = 0, 0, [], [], None
    state = load_state(state_path, cfg)
    if state is not None:
        load_trainable_state(_unwrap(model), state["trainable"], source=str(state_path))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch, start_step = state["epoch"], state["step"]
        history = [EpochLog(**log, replayed=True) for log in state.get("history", [])]
        step_losses, best = list(state.get("step_losses", [])), state.get("best")
        if dist_info.is_main and start_epoch < cfg.epochs:
            print(f"resuming from {state_path}: epoch {start_epoch + 1}, step {start_step}")
        elif dist_info.is_main:
            print(f"{state_path} holds this run, finished: {start_epoch} epoch(s), nothing to train")
    if dist_info.is_main and on_step is not None:
        for number, step_loss in enumerate(step_losses, start=1):
            on_step(StepLog(number, step_loss, replayed=True))
    if dist_info.is_main and on_epoch is not None:
        for log in history:
            on_epoch(log)

    def save(at_epoch: int, at_step: int) -> None:
        """The run's state with ``at_epoch`` epochs done and ``at_step`` optimizer steps into the next."""
        save_state(
            state_path,
            epoch=at_epoch,
            step=at_step,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            cfg=cfg,
            history=history,
            step_losses=step_losses,
            best=best,
        )

    step_model = model
    if dist_info.world > 1:
        step_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        step_model = torch.compile(step_model)

    sampler = EpochBatchSampler(
        len(dataset),
        cfg.micro_batch,
        shuffle=True,
        seed=cfg.seed,
        rank=dist_info.rank,
        world=dist_info.world,
        subset=samples,
    )
    loader = make_loader(
        dataset,
        sampler,
        cfg.workers,
        pin_memory=device.type == "cuda",
        prefetch=cfg.prefetch,
        persistent=cfg.persistent_workers,
    )
    num_batches = len(sampler)
    steps_per_epoch = -(-num_batches // accum_steps)
    start_batch = min(start_step * accum_steps, num_batches)

    for epoch in range(start_epoch, cfg.epochs):
        sampler.set_epoch(epoch, start_batch)
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        seen, loss_sum, correct, started = 0, 0.0, 0, time.perf_counter()
        step_seen, step_loss_sum = 0, 0.0
        bar = Progress(
            f"epoch {epoch + 1}/{cfg.epochs}",
            num_batches,
            start_batch,
            unit="batch",
            enabled=progress and dist_info.is_main,
        )
        for batch_idx, (images, labels) in enumerate(loader, start=start_batch):
            images = finish_batch(dataset.transform, images, device)
            labels = labels.to(device, non_blocking=True)
            last_of_step = (batch_idx + 1) % accum_steps == 0 or batch_idx + 1 == num_batches
            sync = contextlib.nullcontext() if last_of_step or dist_info.world == 1 else step_model.no_sync()
            try:
                loss, logits = train_step(
                    step_model, loss_fn, images, labels, optimizer, scaler, amp_dtype, accum_steps, last_of_step, sync
                )
            except NonFiniteLoss as bad:
                raise TrainingError(
                    f"train: loss is {bad.value} at epoch {epoch + 1}, batch {batch_idx + 1}"
                    f" (lr {lr:g}); lower train.lr or check the data"
                ) from None

            n, summed_loss = labels.numel(), loss.item() * labels.numel()
            seen, step_seen = seen + n, step_seen + n
            loss_sum, step_loss_sum = loss_sum + summed_loss, step_loss_sum + summed_loss
            correct += (logits.argmax(dim=1) == labels).sum().item()
            if last_of_step:
                step_losses.append(step_loss_sum / step_seen)
                step_seen, step_loss_sum = 0, 0.0
                if dist_info.is_main and on_step is not None:
                    on_step(StepLog(len(step_losses), step_losses[-1]))
            elapsed = time.perf_counter() - started
            step = -(-(batch_idx + 1) // accum_steps)
            bar.update(
                1,
                line=lambda: training_line(
                    epoch,
                    cfg.epochs,
                    step,
                    steps_per_epoch,
                    loss_sum / seen,
                    seen / max(bar.elapsed, 1e-9),
                    bar.rate(step - start_step),
                ),
                loss=f"{loss_sum / seen:.4f}",
                acc=f"{100 * correct / seen:.1f}",
                img_s=f"{seen / max(elapsed, 1e-9):.0f}",
            )

            if last_of_step and stop_requested(stop, dist_info, device):
                if dist_info.is_main:
                    save(epoch, step)
                bar.close()
                why = f"signal {stop.signal}" if stop.signal is not None else "a signal to another rank"
                raise Interrupted(
                    f"stopped by {why} at epoch {epoch + 1}, batch {batch_idx + 1}; state saved to {state_path}"
                )
        bar.close()
        # The loss is checked before each step; the weights after the epoch's last one, so that
        # no state (and so no final checkpoint) is ever saved from a poisoned model.
        poisoned = first_non_finite({name: p for name, p in model.named_parameters() if p.requires_grad})
        if poisoned is not None:
            raise TrainingError(
                f"train: weights are not finite after epoch {epoch + 1} (first: {poisoned}); "
                "lower train.lr or check the data"
            )
        scheduler.step()
        start_batch = start_step = 0
        elapsed = time.perf_counter() - started
        log = EpochLog(
            epoch + 1, loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), lr, seen / max(elapsed, 1e-9), elapsed
        )
        if validation is not None and dist_info.is_main:
            log.validation = validation_scores(model, validation, device, cfg.precision, progress)
        history.append(log)
        if log.validation is not None and best_epoch(history) is log:
            best = {"epoch": log.epoch, "score": log.validation[BEST_BY], "trainable": cpu_trainable_state(model)}
        if dist_info.is_main:
            save(epoch + 1, 0)
            if on_epoch is not None:
                on_epoch(log)
    if cfg.keep == "best" and best is not None:
        load_trainable_state(_unwrap(model), best["trainable"], source=f"{state_path}: best epoch {best['epoch']}")
    return history


def training_line(
    epoch: int, epochs: int, step: int, steps: int, loss: float, images_per_second: float, steps_per_second: float
) -> str:
    """``epoch 2/5 step 120/460 loss 1.2345 312 img/s ETA 0:04:10``; the ETA is the run's end."""
    remaining = (epochs - epoch) * steps - step
    return (
        f"epoch {epoch + 1}/{epochs} step {step}/{steps} loss {loss:.4f} "
        f"{images_per_second:,.0f} img/s ETA {eta_text(remaining, steps_per_second)}"
    )


def best_epoch(history: Sequence[EpochLog]) -> Optional[EpochLog]:
    """The validated epoch with the highest :data:`BEST_BY` score (the earliest of equals), or None."""
    best = None
    for log in history:
        score = (log.validation or {}).get(BEST_BY)
        if score is not None and (best is None or score > best.validation[BEST_BY]):
            best = log
    return best


def validation_scores(
    model: nn.Module,
    validation: Validation,
    device: torch.device,
    precision: str,
    progress: bool = True,
) -> dict[str, Optional[float]]:
    """Accuracy, mean per-class and many/medium/few accuracy in percent (None: a group without a class).

    The model's and the loader's random streams are left as they were: training
    with validation makes the same weights as training without.
    """
    was_training = _unwrap(model).training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        logits, labels = run_inference(
            model,
            validation.dataset,
            validation.batch_size,
            validation.workers,
            device,
            precision,
            progress,
            "validate",
            validation.subset,
            validation.prefetch,
        )
    model.train(was_training)
    m = classification_metrics(
        labels.tolist(), logits.argmax(dim=1).tolist(), validation.train_counts, len(validation.train_counts)
    )
    return {
        "acc": m["accuracy"],
        "acc_mean_class": m["mean_class_accuracy"],
        "acc_many": m["many"],
        "acc_medium": m["medium"],
        "acc_few": m["few"],
    }
