"""Training that diverges, and outputs the disk refuses: one line, and no half-written file.

A stage that writes several files (evaluate) changes them as one set or not at all; a training
log that DVCLive cannot write names the file it failed on.
"""

from __future__ import annotations

import errno
import os
import resource
import shutil
from pathlib import Path

from faultkit import assert_nothing_left, assert_one_line_error, invoke, run_stage, temp_leftovers, tree, write_params
from stageproc import train_args


def test_nan_loss_stops_training(tmp_path, params_file, shards, head):
    """A huge learning rate blows the adapters' weights up; the cosine head alone would keep logits finite."""
    params = write_params(tmp_path / "params.yaml", params_file, train={"lr": 1e30})
    out = tmp_path / "out"
    done = invoke("train", *train_args(params, shards, head, out))
    assert_one_line_error(done, "train: loss is nan at epoch 1, batch ", "(lr 1e+30); lower train.lr")
    assert not (out / "model").exists() and not (out / "state").exists()
    assert temp_leftovers(out) == []


class FillingDisk:
    """A file whose writes fail with ENOSPC once ``room`` bytes have been written."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


def disk_with_room(room: int):
    def open_for_writing(path, mode="r", *args, **kwargs):
        file = open(path, mode, *args, **kwargs)
        return FillingDisk(file, room) if "w" in mode else file

    return open_for_writing


def test_disk_full_while_writing_shards(tmp_path, monkeypatch, params_file, shards):
    """Full after 40 kB, in the middle of the first tar; a previous good shard folder stays as it was."""
    import liftplus.data.shard_writer

    out = Path(shutil.copytree(shards, tmp_path / "out" / "shards"))
    before = tree(out)
    monkeypatch.setattr(liftplus.data.shard_writer, "open", disk_with_room(40_000), raising=False)
    done = invoke("shard", "--params", params_file, "--out", out)
    assert_one_line_error(done, f"{out}: cannot write shards (No space left on device); nothing was written")
    assert_nothing_left(tmp_path / "out", {f"shards/{name}": content for name, content in before.items()})


def test_disk_full_while_writing_head_init(tmp_path, monkeypatch, params_file, shards, head):
    import liftplus.io

    out = tmp_path / "out" / "text_init.pt"
    out.parent.mkdir()
    shutil.copy(head, out)
    monkeypatch.setattr(liftplus.io, "open", disk_with_room(1_000), raising=False)
    done = invoke("init_head", "--params", params_file, "--shards", shards, "--out", out)
    assert_one_line_error(done, f"{out}: cannot write (No space left on device); nothing was written")
    assert_nothing_left(tmp_path / "out", {"text_init.pt": head.read_bytes()})


def limit_file_size(size: int):
    """For a child process: writes past ``size`` bytes fail (EFBIG), as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))


def test_disk_full_while_writing_checkpoint(tmp_path, params_file, shards, head):
    """A real process whose file writes the kernel refuses past 4 kB: the training state written at
    the end of the first epoch is the first file that large (the final weights go the same way).

    It runs outside any DVC repository, so that DVCLive does not open one (whose state database
    would be the first write refused: see the next test)."""
    out = tmp_path / "out"
    done = run_stage(
        "train",
        *train_args(params_file, shards, head, out),
        cwd=tmp_path,
        preexec_fn=limit_file_size(4096),
    )
    assert_one_line_error(done, f"{out / 'state' / 'last.pt'}: cannot write (", "nothing was written")
    assert not (out / "model" / "adapter.pt").exists() and not (out / "state" / "last.pt").exists()
    assert temp_leftovers(out) == []


def test_disk_full_when_the_training_log_starts(tmp_path, monkeypatch, params_file, shards, head):
    """DVCLive opens the DVC repository, whose state is an sqlite database; on a full disk that
    fails with sqlite3.OperationalError (seen with a 4 kB file-size limit), not an OSError."""
    import sqlite3

    import dvclive.live

    def full_disk(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(dvclive.live, "get_dvc_repo", full_disk)
    out = tmp_path / "out"
    done = invoke("train", *train_args(params_file, shards, head, out))
    assert_one_line_error(done, f"{out / 'live'}: cannot start the DVCLive training log (disk I/O error)")
    assert not (out / "model").exists() and not (out / "state").exists()
    assert temp_leftovers(out) == []


def test_training_log_write_refused_mid_run_names_the_file(tmp_path, params_file, shards, head):
    """A file where DVCLive makes its per-metric folder: refused at the first optimizer step's loss
    (DVCLive's start clears its plot folders, but not a file in their place). Training stops in one
    line naming it, writes no checkpoint, and once the path is fixed a rerun trains to the end."""
    out = tmp_path / "out"
    in_the_way = out / "live" / "plots" / "metrics"
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("not a folder\n")
    done = invoke("train", *train_args(params_file, shards, head, out))
    assert_one_line_error(
        done,
        f"error: {in_the_way / 'fit'}: cannot write (Not a directory); the training log stopped at optimizer step 1",
    )
    assert not (out / "model" / "adapter.pt").exists() and temp_leftovers(out) == []

    in_the_way.unlink()
    again = invoke("train", *train_args(params_file, shards, head, out))
    assert again.code == 0, again.stderr[-2000:]
    assert "epoch 1/1: loss" in again.stdout
    assert (out / "model" / "adapter.pt").is_file() and (out / "live" / "metrics.json").is_file()


EVAL_OUTPUTS = ("per_class.csv", "predictions.csv", "eval.json")


def previous_outputs(out: Path, *names: str) -> dict[str, bytes]:
    """Stand-ins for an earlier evaluation's files (content no new run can give), as ``tree`` lists them."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_text(f"previous {name}\n")
    return tree(out)


def evaluate_args(params: Path, shards: Path, checkpoint: Path, out: Path) -> list:
    return ["--params", params, "--shards", shards, "--model", checkpoint, "--out", out]


def test_evaluation_outputs_change_together_when_one_cannot_be_renamed(tmp_path, params_file, shards, checkpoint):
    """``predictions.csv`` is a folder: the other two files, renamed into place before it in the
    past, must stay the previous ones."""
    out = tmp_path / "metrics"
    (out / "predictions.csv").mkdir(parents=True)
    (out / "predictions.csv" / "keep.txt").write_text("a user's file\n")
    before = previous_outputs(out, "per_class.csv", "eval.json")
    done = invoke("evaluate", *evaluate_args(params_file, shards, checkpoint, out))
    assert_one_line_error(done, f"error: {out / 'predictions.csv'}: cannot write (Is a directory); nothing was written")
    assert_nothing_left(out, before)


def test_evaluation_outputs_change_together_on_a_full_disk(tmp_path, params_file, shards, checkpoint):
    """A real process whose writes past a size between ``per_class.csv``'s and ``predictions.csv``'s
    are refused: the first is written, the second is not, and neither replaces a previous file."""
    sizes = invoke("evaluate", *evaluate_args(params_file, shards, checkpoint, tmp_path / "sizes"))
    assert sizes.code == 0, sizes.stderr[-2000:]
    small, large = ((tmp_path / "sizes" / name).stat().st_size for name in EVAL_OUTPUTS[:2])
    assert small < large
    out = tmp_path / "metrics"
    before = previous_outputs(out, *EVAL_OUTPUTS)
    done = run_stage(
        "evaluate",
        *evaluate_args(params_file, shards, checkpoint, out),
        preexec_fn=limit_file_size((small + large) // 2),
    )
    assert_one_line_error(done, f"error: {out / 'predictions.csv'}: cannot write (File too large); nothing was written")
    assert_nothing_left(out, before)
