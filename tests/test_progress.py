"""Progress lines where there is no terminal: when they come, what they say, and that the train stage prints them."""

from __future__ import annotations

import io
import re
import sys

import pytest
from faultkit import invoke, run_stage, train_args, write_params
from pipeline_project import learnable_fashion_mnist

import liftplus.progress as progress_module
from liftplus.data.sharding import _shown
from liftplus.data.sources import Record
from liftplus.progress import Progress, clock_text, eta_text, line_interval
from liftplus.training.loop import training_line


class FakeClock:
    """Seconds that pass only when the test says so."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def no_terminal(monkeypatch):
    """stderr, where a bar would be drawn, is no terminal (as under DVC's queue, CI or nohup)."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.delenv(progress_module.SECONDS_ENV, raising=False)


def evaluate_progress(clock: FakeClock, out: io.StringIO, **options) -> Progress:
    return Progress("evaluate", 10_000, unit="img", stream=out, clock=clock, **options)


def drive(shown: Progress, clock: FakeClock, updates: int, per_update: int, seconds: float) -> None:
    for _ in range(updates):
        clock.advance(seconds)
        shown.update(
            per_update,
            line=lambda: (
                f"evaluate: {shown.count:,}/{shown.total:,} images {shown.rate():,.0f} img/s ETA {shown.eta()}"
            ),
        )


def test_first_line_after_10_s_then_one_every_30_s():
    clock, out = FakeClock(), io.StringIO()
    shown = evaluate_progress(clock, out)
    drive(shown, clock, updates=75, per_update=128, seconds=1.0)  # 128 img/s for 75 s: 9,600 images
    assert out.getvalue().splitlines() == [
        "evaluate: 1,280/10,000 images 128 img/s ETA 0:01:08",  # at 10 s
        "evaluate: 5,120/10,000 images 128 img/s ETA 0:00:38",  # at 40 s
        "evaluate: 8,960/10,000 images 128 img/s ETA 0:00:08",  # at 70 s
    ]


def test_interval_from_the_environment_and_zero_turns_lines_off(monkeypatch):
    monkeypatch.setenv(progress_module.SECONDS_ENV, "4")
    assert line_interval() == 4.0
    clock, out = FakeClock(), io.StringIO()
    shown = evaluate_progress(clock, out)  # first line after min(10, 4) s, then every 4 s
    drive(shown, clock, updates=13, per_update=100, seconds=1.0)
    assert [line.split()[1] for line in out.getvalue().splitlines()] == ["400/10,000", "800/10,000", "1,200/10,000"]

    monkeypatch.setenv(progress_module.SECONDS_ENV, "0")
    clock, out = FakeClock(), io.StringIO()
    drive(evaluate_progress(clock, out), clock, updates=100, per_update=100, seconds=1.0)
    assert out.getvalue() == ""

    monkeypatch.setenv(progress_module.SECONDS_ENV, "soon")
    assert line_interval() == progress_module.DEFAULT_SECONDS


def test_disabled_progress_prints_nothing():
    clock, out = FakeClock(), io.StringIO()
    drive(evaluate_progress(clock, out, enabled=False), clock, updates=100, per_update=100, seconds=1.0)
    assert out.getvalue() == ""


def test_eta_and_clock_text():
    assert clock_text(250) == "0:04:10" and clock_text(3 * 3600 + 61.4) == "3:01:01"
    assert eta_text(1720, 1720 / 250) == "0:04:10"
    assert eta_text(None, 5.0) == "?" and eta_text(10, 0.0) == "?"


def test_training_line_gives_the_runs_eta():
    # epoch 2 of 5 (0-based 1), step 120 of 460: (5 - 1) * 460 - 120 = 1,720 steps left at 6.88 steps/s
    assert training_line(1, 5, 120, 460, 1.23454, 312.4, 1720 / 250) == (
        "epoch 2/5 step 120/460 loss 1.2345 312 img/s ETA 0:04:10"
    )
    assert training_line(0, 1, 3, 3, 0.5, 1234.0, 2.0) == "epoch 1/1 step 3/3 loss 0.5000 1,234 img/s ETA 0:00:00"


def records(clock: FakeClock, count: int, size: int, seconds: float):
    for i in range(count):
        clock.advance(seconds)
        yield Record(f"train-{i:08d}", i % 3, b"x" * size, "png", f"img{i}.png")


@pytest.mark.parametrize("total, etas", [(100, ["0:00:40", "0:00:10"]), (None, ["?", "?"])])
def test_shard_lines_count_records_and_megabytes(monkeypatch, total, etas):
    """Records written at 2 a second, 50 kB each; the ETA needs the split's record count."""
    clock = FakeClock()
    monkeypatch.setattr(progress_module, "time", type("FakeTime", (), {"monotonic": staticmethod(clock)}))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    passed = list(_shown(records(clock, 90, 50_000, 0.5), "train", total))
    assert len(passed) == 90
    assert out.getvalue().splitlines() == [
        f"shard train: 20 records 1.0 MB 2 rec/s ETA {etas[0]}",  # at 10 s
        f"shard train: 80 records 4.0 MB 2 rec/s ETA {etas[1]}",  # at 40 s
    ]


# --- the stage, its stdout a pipe -------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """Fashion-MNIST-shaped raw data (about 90 long-tailed training images), its shards and head init."""
    root = tmp_path_factory.mktemp("progress")
    raw = learnable_fashion_mnist(root / "raw", 24, 4)
    params = write_params(
        root / "params.yaml",
        data={"root": str(raw), "imbalance_ratio": 10},
        train={"epochs": 2, "batch_size": 4, "micro_batch": 2, "workers": 0},
    )
    for stage, args in (
        ("shard", ["--out", root / "shards"]),
        ("init_head", ["--shards", root / "shards", "--out", root / "head.pt"]),
    ):
        done = invoke(stage, "--params", params, *args)
        assert done.code == 0, done.stderr
    return root, params


@pytest.mark.slow
def test_train_stage_prints_step_lines_with_an_eta_to_a_pipe(tiny_project):
    root, params = tiny_project
    out = root / "out"
    done = run_stage(
        "train",
        *train_args(params, root / "shards", root / "head.pt", out),
        LIFTPLUS_PROGRESS_SECONDS="0.001",
    )
    assert done.code == 0, done.stderr[-2000:]
    images = int(re.search(r"^train: (\d+) images", done.stdout, re.MULTILINE).group(1))
    steps_per_epoch = -(-images // 4)  # batch_size 4
    steps = [line for line in done.stdout.splitlines() if " step " in line]
    assert steps, done.stdout[-2000:]
    pattern = rf"epoch [12]/2 step \d+/{steps_per_epoch} loss \d+\.\d{{4}} [\d,]+ img/s ETA \d+:\d\d:\d\d"
    assert all(re.fullmatch(pattern, line) for line in steps), steps[:5]
    assert {line.split()[1] for line in steps} == {"1/2", "2/2"}  # lines in every epoch
    assert "epoch 2/2:" in done.stdout  # and the epoch summary lines, as before
