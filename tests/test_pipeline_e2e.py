"""`dvc repro` of the whole pipeline on a tiny learnable dataset, in a throw-away copy of the project."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from pipeline_project import learnable_fashion_mnist, make_project, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e")
    raw = learnable_fashion_mnist(base / "raw")
    return make_project(base / "project", raw)


@pytest.fixture(scope="module")
def reproduced(project):
    result = run(["dvc", "repro"], project)
    return project, result


def test_repro_runs_every_stage_to_evaluate(reproduced):
    project, result = reproduced
    for stage in ("shard", "validate", "init_head", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in result.stdout

    manifest = json.loads((project / "data/shards/manifest.json").read_text())
    expected_counts = [int(60 * 0.1 ** (i / 9)) for i in range(10)]
    assert manifest["splits"]["train"]["class_counts"] == expected_counts
    assert manifest["splits"]["test"]["num_samples"] == 100

    stats = json.loads((project / "data/stats/longtail.json").read_text())
    assert stats["dataset"]["imbalance_ratio"] == round(expected_counts[0] / expected_counts[-1], 4)

    metrics = json.loads((project / "data/metrics/eval.json").read_text())["test"]
    with open(project / "data/metrics/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["images"] == 100
    correct = sum(r["actual"] == r["predicted"] for r in rows)
    assert metrics["acc"] == correct  # 100 test images: percent == count, stored rounded
    # counts 60..6: no class has more than 100 images, five have 20-100, five fewer than 20
    assert metrics["acc_many"] is None
    assert (metrics["classes_many"], metrics["classes_medium"], metrics["classes_few"]) == (0, 5, 5)
    assert 0 <= metrics["acc_few"] <= 100 and 0 <= metrics["acc_medium"] <= 100
    assert all(value == round(value, 2) for value in metrics.values() if isinstance(value, float))
    assert (project / "data/model/adapter.pt").stat().st_size < 2_000_000


def test_register_tagged_the_model_with_its_metrics(reproduced):
    project, _ = reproduced
    registration = json.loads((project / "data/registry/registration.json").read_text())
    metrics = json.loads((project / "data/metrics/eval.json").read_text())
    assert registration["registered"] is True
    assert registration["metrics"] == {**metrics["test"], "tte": metrics["tte"], "tte_expand": metrics["tte_expand"]}
    tags = run(["git", "tag", "--list"], project).stdout.split()
    assert registration["tag"] in tags and registration["tag"].startswith("liftplus-classifier@v")


def test_second_repro_is_a_noop_and_status_clean(reproduced):
    project, _ = reproduced
    again = run(["dvc", "repro"], project)
    assert "Running stage" not in again.stdout
    assert "up to date" in again.stdout
    status = run(["dvc", "status"], project)
    assert "up to date" in status.stdout


def test_plots_page_renders_without_internet(reproduced, tmp_path):
    from liftplus.plots import offline_template

    project, _ = reproduced
    template = tmp_path / "offline.html"
    template.write_text(offline_template())
    run(["dvc", "plots", "show", "--html-template", str(template), "-o", str(tmp_path / "plots")], project)
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "vegaEmbed(" in page and "class_counts_csv" in page and "per_class_csv" in page
    assert "<script src=" not in page and "cdn.jsdelivr" not in page

    charts = re.findall(r"vegaEmbed\('#([^']+)'", page)
    assert {
        "dvclive_train_plots_metrics_val_acc_mean_class_tsv",
        "dvclive_train_plots_metrics_fit_loss_tsv",
        "data_metrics_per_class_csv",
    } <= set(charts), charts
    drawn = drawn_charts(tmp_path / "plots" / "index.html", tmp_path / "chromium", charts)
    assert drawn == dict.fromkeys(charts, True), "every chart draws, offline, in a real browser"


def drawn_charts(page: Path, profile: Path, charts: list[str]) -> dict[str, bool]:
    """Each chart's div as headless Chromium leaves the page (no network): True when vega drew an SVG in it."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    dom = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=20000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=True,
    ).stdout
    starts = sorted((dom.find(f'<div id="{chart}"'), chart) for chart in charts)
    ends = [start for start, _ in starts[1:]] + [len(dom)]
    return {chart: start >= 0 and "<svg" in dom[start:end] for (start, chart), end in zip(starts, ends)}


def test_rerun_on_a_finished_state_keeps_the_weights_and_the_curves(reproduced):
    """As a sweep's experiment equal to the baseline does: the persisted state holds the
    finished run, so train runs no epoch, yet its outputs and DVCLive curves are all there."""
    project, _ = reproduced
    loss_tsv = project / "dvclive/train/plots/metrics/fit/loss.tsv"
    curve = loss_tsv.read_text()
    adapter = (project / "data/model/adapter.pt").read_bytes()

    rerun = run(["dvc", "repro", "--force", "--single-item", "train"], project)
    assert "nothing to train" in rerun.stdout
    epoch_lines = [line for line in rerun.stdout.splitlines() if line.startswith("epoch ")]
    assert epoch_lines and all("(from the saved state)" in line for line in epoch_lines)
    assert loss_tsv.read_text() == curve and len(curve.splitlines()) > 2  # header + every epoch
    assert (project / "data/model/adapter.pt").read_bytes() == adapter
    assert "up to date" in run(["dvc", "status"], project).stdout
