"""train stage: fine-tune the PEFT modules and the head on the training shards.

Runs alone (``python -m stages.train``) or on several processes
(``torchrun --nproc_per_node N -m stages.train``); rank 0 logs and writes.

The resumable state (--state) is written after every epoch and on SIGTERM/SIGINT, and
read back to resume; a state of another run (other params, code or data) is ignored and
overwritten. It is none of DVC's outs (git-ignored instead): a persistent out would keep
DVC from restoring this stage from its run cache, as it does when params return to a
point already trained. Such a restore leaves the state as the last trained run left it.

DVCLive curves (``--live``): per epoch ``fit/loss`` and ``fit/acc``, and with validation
``val/acc``, ``val/acc_mean_class``, ``val/acc_many|medium|few``; per optimizer step
``fit/step_loss`` (its own plot, whose ``step`` is the optimizer step); at the end
``val/best_epoch`` and ``val/best_acc_mean_class`` (summary only). No timing goes into
them, so ``dvc metrics diff`` of two runs of the same params is quiet.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from liftplus.data.manifest import read_manifest, verify_checksums
from liftplus.errors import OutputError, exit_on_error
from liftplus.io import error_reason
from liftplus.locks import output_lock
from liftplus.params import load_params, resolved_train
from liftplus.training.loop import EpochLog, Interrupted, StepLog, StopRequest, best_epoch, fit
from liftplus.training.run import finish_training, prepare_training, resolved_validation
from stages import stage_parser

ACCURACY_DECIMALS, LOSS_DECIMALS = 2, 4
"""What the logged values are rounded to: more digits are noise in ``dvc exp show``."""


def epoch_metrics(log: EpochLog) -> dict[str, float]:
    """The DVCLive curves of one epoch; a validation group without a class is left out, not logged as None."""
    metrics = {"fit/loss": round(log.loss, LOSS_DECIMALS), "fit/acc": round(log.accuracy, ACCURACY_DECIMALS)}
    for name, value in (log.validation or {}).items():
        if value is not None:
            metrics[f"val/{name}"] = round(value, ACCURACY_DECIMALS)
    return metrics


def epoch_line(log: EpochLog, epochs: int) -> str:
    saved = " (from the saved state)" if log.replayed else ""
    line = (
        f"epoch {log.epoch}/{epochs}{saved}: loss {log.loss:.4f}  acc {log.accuracy:.2f}%  "
        f"lr {log.lr:.4g}  {log.images_per_second:.0f} img/s"
    )
    if log.validation:
        line += f"  val acc {log.validation['acc']:.2f}%  mean/class {log.validation['acc_mean_class']:.2f}%"
    return line


def dvclive_logger(live_dir: str, epochs: int):
    """A fresh DVCLive log: ``fit`` replays the steps and epochs of a resumed run into it first.

    Returns the Live and the ``on_epoch``, ``on_step`` and ``on_end`` callbacks."""
    import sqlite3

    from dvclive import Live

    try:
        live = Live(live_dir, resume=False, save_dvc_exp=False, dvcyaml=None)
    except (OSError, sqlite3.Error) as exc:  # DVCLive opens the DVC repo, whose state is an sqlite file
        where = getattr(exc, "filename", None) or live_dir
        raise OutputError(f"{where}: cannot start the DVCLive training log ({error_reason(exc)})") from exc

    def log_epoch(log: EpochLog) -> None:
        with log_writes(
            live_dir, f"the training log stopped at epoch {log.epoch}, whose state is saved; fix it and rerun to resume"
        ):
            live.step = log.epoch
            for name, value in epoch_metrics(log).items():
                live.log_metric(name, value)
            live.next_step()
        print(epoch_line(log, epochs), flush=True)

    def log_step(log: StepLog) -> None:
        """``fit/step_loss`` at the optimizer step; Live's own step (the epoch) is put back after. The
        summary keeps the epoch metrics only: the last step's loss would repeat ``fit/loss``'s story."""
        with log_writes(
            live_dir,
            f"the training log stopped at optimizer step {log.step}; fix it and rerun "
            "to resume from the last epoch saved",
        ):
            epoch_step = live.step
            live.step = log.step
            live.log_metric("fit/step_loss", round(log.loss, LOSS_DECIMALS))
            live.step = epoch_step
            live.summary.get("fit", {}).pop("step_loss", None)

    def log_end(history: list[EpochLog]) -> None:
        best = best_epoch(history)
        if best is None:
            return
        with log_writes(live_dir, "training is done and its state saved; fix it and rerun to write the weights"):
            live.log_metric("val/best_epoch", best.epoch, plot=False)
            live.log_metric(
                "val/best_acc_mean_class", round(best.validation["acc_mean_class"], ACCURACY_DECIMALS), plot=False
            )
        print(f"best epoch {best.epoch}/{epochs}: val mean/class {best.validation['acc_mean_class']:.2f}%", flush=True)

    return live, log_epoch, log_step, log_end


@contextlib.contextmanager
def log_writes(live_dir: str, then: str) -> Iterator[None]:
    """A write DVCLive cannot make (a folder where its file goes, a full disk) as one line naming the file."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"{exc.filename or live_dir}: cannot write ({error_reason(exc)}); {then}") from exc


@contextlib.contextmanager
def ended_after(live, live_dir: str) -> Iterator[None]:
    """End the DVCLive log after the block (its summary, its report), as ``with live`` does;
    when the block failed, that failure is the one reported, whatever the log's end does."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            live.end()
        raise
    with log_writes(live_dir, "training is done and its state saved; fix it and rerun to write the weights"):
        live.end()
        # A run that trains no epoch (zero-shot) logs no curve; dvc.yaml still declares the folder.
        (Path(live_dir) / "plots" / "metrics").mkdir(parents=True, exist_ok=True)


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser(
        "train",
        __doc__,
        shards="data/shards",
        head="data/head/text_init.pt",
        out="data/model/adapter.pt",
        state="data/train_state/last.pt",
        live="dvclive/train",
    ).parse_args(argv)
    with output_lock(args.out, "train"):
        train_stage(args)


def train_stage(args) -> None:
    params = load_params(args.params)
    train = resolved_train(params.train)
    shard_dir = args.shards
    manifest = read_manifest(shard_dir / "manifest.json")
    if train.verify_checksums:
        verify_checksums(
            manifest, shard_dir, splits=["train", "val"] if resolved_validation(train, manifest) == "val" else ["train"]
        )
    run = prepare_training(params, train, manifest, shard_dir, args.head)
    state_path = args.state
    if run.dist.is_main:
        print(validation_line(run), flush=True)

    live, on_epoch, on_step, on_end = (None, None, None, None)
    if run.dist.is_main:
        live, on_epoch, on_step, on_end = dvclive_logger(str(args.live), run.config.epochs)
    stop = StopRequest().install()
    try:
        with ended_after(live, str(args.live)) if live else contextlib.nullcontext():
            history = fit(
                run.model,
                run.dataset,
                run.loss,
                run.config,
                state_path,
                on_epoch=on_epoch,
                dist_info=run.dist,
                stop=stop,
                validation=run.validation,
                on_step=on_step,
                samples=run.samples,
            )
            if on_end is not None:
                on_end(history)
    except Interrupted as exc:
        raise SystemExit(f"train: {exc}; rerun to resume") from None
    finally:
        stop.restore()
    if run.dist.is_main:
        finish_training(run, args.out)


def validation_line(run) -> str:
    """What the run trains and validates on, and which epoch's weights it writes."""
    if run.validation is None:
        return f"train: {len(run.dataset)} images, no validation; writing the last epoch's weights"
    if run.samples is None:
        return (
            f"train: {len(run.dataset)} images, validated each epoch on the val split "
            f"({len(run.validation.dataset)} images); writing the {run.train.keep} epoch's weights"
        )
    return (
        f"train: {len(run.samples)} images, validated each epoch on {len(run.validation.subset)} training "
        f"images held out of them; writing the {run.train.keep} epoch's weights"
    )


if __name__ == "__main__":
    main()
