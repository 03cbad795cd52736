"""train stage: fine-tune the PEFT modules and the head on the training shards.

Runs alone (``python -m stages.train``) or on several processes
(``torchrun --nproc_per_node N -m stages.train``); rank 0 logs and writes.

The resumable state (--state) is written after every epoch and on SIGTERM/SIGINT, and
read back to resume; a state of another run (other params, code or data) is ignored and
overwritten. It is none of DVC's outs (git-ignored instead): a persistent out would keep
DVC from restoring this stage from its run cache, as it does when params return to a
point already trained. Such a restore leaves the state as the last trained run left it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from liftplus.data.manifest import read_manifest, shard_paths, verify_checksums
from liftplus.errors import OutputError, exit_on_error
from liftplus.io import error_reason
from liftplus.locks import output_lock
from liftplus.params import load_params, resolved_train
from liftplus.train import EpochLog, Interrupted, StopRequest, fit
from liftplus.training_run import finish_training, prepare_training
from stages import stage_parser


def dvclive_logger(live_dir: str, epochs: int):
    """A fresh DVCLive log: ``fit`` replays the epochs of a resumed run into it first."""
    import sqlite3

    from dvclive import Live

    try:
        live = Live(live_dir, resume=False, save_dvc_exp=False, dvcyaml=None)
    except (OSError, sqlite3.Error) as exc:  # DVCLive opens the DVC repo, whose state is an sqlite file
        where = getattr(exc, "filename", None) or live_dir
        raise OutputError(f"{where}: cannot start the DVCLive training log ({error_reason(exc)})") from exc

    def log_epoch(log: EpochLog) -> None:
        with log_writes(live_dir, f"the training log stopped at epoch {log.epoch}, whose state is saved; "
                                  "fix it and rerun to resume"):
            live.step = log.epoch
            live.log_metric("train/loss", log.loss)
            live.log_metric("train/accuracy", log.accuracy)
            live.log_metric("train/lr", log.lr)
            live.log_metric("train/images_per_second", log.images_per_second)
            live.next_step()
        saved = " (from the saved state)" if log.replayed else ""
        print(f"epoch {log.epoch}/{epochs}{saved}: loss {log.loss:.4f}  acc {log.accuracy:.2f}%  "
              f"lr {log.lr:.4g}  {log.images_per_second:.0f} img/s", flush=True)

    return live, log_epoch


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


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser(
        "train", __doc__, shards="data/shards", head="data/head/text_init.pt", out="data/model/adapter.pt",
        state="data/train_state/last.pt", live="dvclive/train",
    ).parse_args(argv)
    with output_lock(args.out, "train"):
        train_stage(args)


def train_stage(args) -> None:
    params = load_params(args.params)
    train = resolved_train(params.train)
    shard_dir = args.shards
    manifest = read_manifest(shard_dir / "manifest.json")
    if train.verify_checksums:
        verify_checksums(manifest, shard_dir, splits=["train"])
    run = prepare_training(params, train, manifest, shard_paths(manifest, shard_dir, "train"), args.head)
    state_path = args.state

    live, on_epoch = (None, None)
    if run.dist.is_main:
        live, on_epoch = dvclive_logger(str(args.live), run.config.epochs)
    stop = StopRequest().install()
    try:
        with ended_after(live, str(args.live)) if live else contextlib.nullcontext():
            fit(run.model, run.dataset, run.loss, run.config, state_path,
                on_epoch=on_epoch, dist_info=run.dist, stop=stop)
    except Interrupted as exc:
        raise SystemExit(f"train: {exc}; rerun to resume") from None
    finally:
        stop.restore()
    if run.dist.is_main:
        finish_training(run, args.out)


if __name__ == "__main__":
    main()
