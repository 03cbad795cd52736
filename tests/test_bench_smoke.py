"""The benchmarks still start and still build inputs the library accepts (no figure is checked).

``python -m bench`` is not part of the test suite (it takes minutes), so each
benchmark's setup runs here on tiny inputs: the parts that broke unnoticed when
the library began refusing a long-tail ratio that empties a class.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.__main__ import BENCHMARKS, figure_descriptions
from bench.common import REPO, BenchContext, offline_env
from bench.gpu.settings import GPU_DEFAULTS, parse_args, plan_counts, settings
from bench.photos import photo_folder
from bench.repro_time import (
    FASHION_MNIST_ROOT,
    QUICK_IMBALANCE_RATIO,
    QUICK_SUBSET,
    quick_project,
    set_data_params,
)
from bench.repro_time import run as repro_time_run
from bench.shard_throughput import photo_figures

pytestmark = pytest.mark.slow  # bench smoke runs: the slow lane


def test_entry_points_start_and_every_figure_is_described():
    for module in ("bench", "bench.gpu"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--help"], cwd=REPO, env=offline_env(), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert f"python -m {module}" in result.stdout
    descriptions = figure_descriptions()  # imports every benchmark module
    for name in BENCHMARKS:
        assert descriptions[f"bench_{name}_seconds"] == f"wall time of the {name} benchmark, s"
    for key in ("data_path_speedup", "step_time_ratio", "tte_cost_ratio", "checkpoint_fraction"):
        assert descriptions[key].startswith("ratio: ")


def test_shard_benchmark_shards_every_photo(tmp_path):
    # 15 photos a class: the flat folder holds round(0.2 * 15) = 3 out as test, 12 train. The long-tail
    # rule at the library's default IR 100 would keep int(12 * 0.01) = 0 of the last class (refused).
    # 150 samples read back in batches of 64: 3 batches, the rate timed over the last two.
    figures = photo_figures(BenchContext(quick=True, workdir=tmp_path), 150)
    manifest = json.loads((tmp_path / "shard-throughput" / "photos" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["class_counts"] == [12] * 10
    assert manifest["splits"]["test"]["class_counts"] == [3] * 10
    assert figures["shard_samples_per_second"] > 0 and figures["shard_read_samples_per_second"] > 0
    assert 0 < figures["shard_bytes_fraction"] < 1  # 341x256 (short side 256) against the 500x375 originals


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.jpg"))}


def test_photos_do_not_depend_on_the_pool(tmp_path):
    one = photo_folder(tmp_path / "one", 5, classes=3, seed=4)
    pool = photo_folder(tmp_path / "pool", 5, classes=3, seed=4, processes=2)
    digests = _tree_digest(one)
    assert sorted(digests) == [
        "class_00/img_00000.jpg",
        "class_00/img_00003.jpg",
        "class_01/img_00001.jpg",
        "class_01/img_00004.jpg",
        "class_02/img_00002.jpg",
    ]
    assert digests == _tree_digest(pool)
    assert len(set(digests.values())) == 5
    assert _tree_digest(photo_folder(tmp_path / "other", 5, classes=3, seed=5)) != digests


def test_set_data_params_edits_only_the_data_section():
    text = "data:\n  root: /a    # where\n  imbalance_ratio: 1000\nother:\n  root: /keep\n"
    edited = set_data_params(root="/b", imbalance_ratio=100)(text)
    assert edited == "data:\n  root: /b    # where\n  imbalance_ratio: 100\nother:\n  root: /keep\n"
    with pytest.raises(RuntimeError, match=r"no data\.seed line"):
        set_data_params(seed=1)(text)


def _cifar_lt_counts(labels: np.ndarray, ratio: float) -> list[int]:
    """The reference's rule: class i keeps int(n / K * ratio ** (-i / (K - 1))) of its images (or all it has)."""
    img_max = len(labels) / 10
    return [min(int((labels == i).sum()), int(img_max * ratio ** (-i / 9))) for i in range(10)]


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="Fashion-MNIST is not installed")
def test_quick_repro_copy_shards_and_validates(tmp_path):
    project = quick_project(tmp_path)
    params = (project / "params.yaml").read_text()
    assert f"  imbalance_ratio: {QUICK_IMBALANCE_RATIO} " in params
    assert f"  root: {tmp_path / 'fashion-mnist-subset'}\n" in params
    assert (REPO / "params.yaml").read_text().count("\n") == params.count("\n")

    for stage in ("shard", "validate"):  # validate refuses a train class without an image
        result = subprocess.run(
            [sys.executable, "-m", f"stages.{stage}"], cwd=project, env=offline_env(), capture_output=True, text=True
        )
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

    raw = gzip.decompress((tmp_path / "fashion-mnist-subset" / "train-labels-idx1-ubyte.gz").read_bytes())
    labels = np.frombuffer(raw[8:], dtype=np.uint8)
    assert len(labels) == QUICK_SUBSET["train"]
    counts = json.loads((project / "data" / "shards" / "manifest.json").read_text())["splits"]["train"]["class_counts"]
    assert counts == _cifar_lt_counts(labels, QUICK_IMBALANCE_RATIO)
    assert min(counts) == 2


@pytest.mark.skipif(not FASHION_MNIST_ROOT.is_dir(), reason="Fashion-MNIST is not installed")
def test_quick_repro_benchmark_runs_to_its_figures(tmp_path):
    """The whole --quick repro_time benchmark (about a minute): dvc repro, the no-op repro, the no-op flow."""
    figures = repro_time_run(BenchContext(quick=True, workdir=tmp_path))
    assert sorted(figures) == ["flow_noop_seconds", "noop_repro_seconds", "quick_demo_repro_seconds"]
    assert 0 < figures["noop_repro_seconds"] < figures["quick_demo_repro_seconds"]
    assert figures["flow_noop_seconds"] > 0


def test_gpu_bench_batch_counts_are_whole_rounds_of_the_workers():
    s = settings(parse_args([], "d"), cuda=True, cpu_count=16)
    assert s["workers"] == 15 and s["images"] == GPU_DEFAULTS["images"] == 4000
    # warm-up: 10 batches rounded up to one round of 15; timed: 3 passes of 4000 at 128 = 94 batches -> 105;
    # eval: 3 * 4000 / 256 = 47 batches -> 60.
    assert plan_counts(s) == {
        "warmup_batches": 15,
        "timed_batches": 105,
        "eval_warmup_batches": 15,
        "eval_timed_batches": 60,
    }
    smoke = settings(parse_args(["--images", "9", "--batch", "2"], "d"), cuda=False)
    assert smoke["workers"] == 2 and smoke["model"] == "liftplus-tiny-vit"
    assert plan_counts(smoke)["timed_batches"] == 6  # ceil(1 * 9 / 2) = 5 -> 6
    with pytest.raises(SystemExit, match="--num-classes must be at least 10"):
        settings(parse_args(["--num-classes", "5"], "d"), cuda=False)
