"""The sweep flow queues a grid of DVC experiments on the fake project and names the best."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from fakeproject import dvc
from prefect.client.orchestration import get_client

from flows import sweep
from flows.sweep import collect_results, experiment_rows, grid_points, liftplus_sweep, metric_value, pick_best


def table_cells(line: str) -> list[str]:
    """The cells of one row of the printed table (rich draws columns with │, ┃ in the header)."""
    return [cell.strip() for cell in re.split("[│┃]", line)[1:-1]]


def accuracy(lr: float, loss: str) -> float:
    """What fake_stage.py's evaluate writes, restated here."""
    return 90.0 - 1000.0 * abs(lr - 0.01) + (5.0 if loss == "ce" else 0.0)


@pytest.mark.slow
def test_sweep_over_four_experiments_names_the_best(prefect_api, fake_project):
    grid = {"train.lr": [0.02, 0.01], "train.loss": ["la", "ce"]}
    params_before = (fake_project / "params.yaml").read_text()

    result = liftplus_sweep(grid=grid, metric="data/metrics/eval.json:test.acc", repo=str(fake_project))

    rows = result["experiments"]
    assert len(rows) == 4 and all(row["status"] == "success" for row in rows)
    for row in rows:
        assert row["metric"] == pytest.approx(accuracy(row["params"]["train.lr"], row["params"]["train.loss"]))
    combos = {(row["params"]["train.lr"], row["params"]["train.loss"]) for row in rows}
    assert combos == {(0.02, "la"), (0.02, "ce"), (0.01, "la"), (0.01, "ce")}
    best = next(row for row in rows if row["name"] == result["best"])
    assert best["params"] == {"train.lr": 0.01, "train.loss": "ce"}
    assert result["value"] == pytest.approx(95.0)
    assert (fake_project / "params.yaml").read_text() == params_before

    shown = json.loads(dvc(fake_project, "exp", "show", "--json").stdout)
    listed = {rev["name"] for row in shown for exp in row.get("experiments") or [] for rev in exp["revs"]}
    assert {row["name"] for row in rows} <= listed, "dvc exp show lists every experiment of the sweep"

    # Every point's overall, mean per class, many, medium, few (fake_stage.eval_metrics: acc, -1.25, +2.5, -4.75, -10.5).
    for row in rows:
        acc = accuracy(row["params"]["train.lr"], row["params"]["train.loss"])
        assert row["accuracy"] == pytest.approx(
            {"overall": acc, "mean per class": acc - 1.25, "many": acc + 2.5, "medium": acc - 4.75, "few": acc - 10.5}
        )
    table = {cells[0]: cells[1:] for cells in map(table_cells, result["table"].splitlines()) if cells}
    assert table["experiment"] == [
        "status",
        "train.lr",
        "train.loss",
        "overall %",
        "mean per class %",
        "many %",
        "medium %",
        "few %",
    ]
    assert table[f"{result['best']} ★"] == ["success", "0.01", "ce", "95.00", "93.75", "97.50", "90.25", "84.50"]
    worst = next(cells for cells in table.values() if cells[1:3] == ["0.02", "la"])
    assert worst[3:] == ["80.00", "78.75", "82.50", "75.25", "69.50"]

    with get_client(sync_client=True) as client:
        artifacts = client.read_latest_artifacts(limit=50)
    markdown = next(a for a in artifacts if a.key == "liftplus-sweep").data
    assert f"**{result['best']}** = 95" in markdown
    assert (
        "| experiment | status | train.lr | train.loss | overall % | mean per class % | many % | medium % | few % |"
        in markdown
    )
    assert f"| {result['best']} ★ | success | 0.01 | ce | 95.00 | 93.75 | 97.50 | 90.25 | 84.50 |" in markdown
    assert markdown.count("| success |") == 4

    # A commit made after the sweep started moves HEAD; the results stay with their baseline.
    baseline = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=fake_project, capture_output=True, text=True, check=True
    ).stdout.strip()
    (fake_project / "NOTES.md").write_text("committed while the sweep ran\n")
    subprocess.run(["git", "add", "NOTES.md"], cwd=fake_project, check=True)
    subprocess.run(["git", "commit", "-qm", "notes"], cwd=fake_project, check=True)
    names = [row["name"] for row in rows]
    at_head = experiment_rows(
        json.loads(dvc(fake_project, "exp", "show", "--json").stdout),
        names,
        list(grid),
        "data/metrics/eval.json:test.acc",
    )
    assert {row["status"] for row in at_head} == {"missing"}
    again = collect_results.fn(names, list(grid), "data/metrics/eval.json:test.acc", baseline, str(fake_project))
    assert again == rows

    # The same results ranked the other way: the worst point is lr 0.02 with la (80).
    worst = pick_best(rows, maximize=False)
    assert worst["params"] == {"train.lr": 0.02, "train.loss": "la"}


def test_grid_points_cover_every_combination():
    points = grid_points({"a": [1, 2, 3], "b": ["x", "y"]})
    assert len(points) == 6
    assert points[0] == {"a": 1, "b": "x"} and points[-1] == {"a": 3, "b": "y"}
    with pytest.raises(ValueError, match="'b' needs a non-empty list"):
        grid_points({"a": [1], "b": []})


def test_metric_by_file_and_key_or_bare_key():
    metrics = {
        "data/metrics/eval.json": {"data": {"accuracy": 71.5, "groups": {"few": None}}},
        "data/stats/longtail.json": {"data": {"classes": 10, "accuracy": 1.0}},
    }
    assert metric_value(metrics, "data/metrics/eval.json:accuracy") == 71.5
    assert metric_value(metrics, "classes") == 10
    assert metric_value(metrics, "data/metrics/eval.json:groups.few") is None
    assert metric_value(metrics, "missing") is None
    with pytest.raises(ValueError, match="several files"):
        metric_value(metrics, "accuracy")


SHOWN = [
    {
        "rev": "abc",
        "name": "main",
        "experiments": [
            {
                "name": "good",
                "executor": {"state": "success"},
                "revs": [
                    {
                        "rev": "1",
                        "name": "good",
                        "error": None,
                        "data": {
                            "params": {"params.yaml": {"data": {"train": {"lr": 0.1}}}},
                            "metrics": {
                                "m.json": {"data": {"acc": 3.0}},
                                "data/metrics/eval.json": {
                                    "data": {
                                        "test": {
                                            "acc": 71.5,
                                            "acc_mean_class": 70.0,
                                            "acc_many": 80.25,
                                            "acc_medium": 60.0,
                                        },
                                        "tte": False,
                                    }
                                },
                            },
                        },
                    }
                ],
            },
            {
                "name": "bad",
                "executor": {"state": "failed"},
                "revs": [
                    {
                        "rev": "2",
                        "name": "bad",
                        "error": None,
                        "data": {"params": {"params.yaml": {"data": {"train": {"lr": 0.2}}}}, "metrics": {}},
                    }
                ],
            },
        ],
    }
]


def test_failed_and_missing_experiments_are_reported_not_ranked():
    rows = experiment_rows(SHOWN, ["bad", "good", "gone"], ["train.lr"], "m.json:acc")
    assert [(r["name"], r["status"], r["metric"]) for r in rows] == [
        ("bad", "failed", None),
        ("good", "success", 3.0),
        ("gone", "missing", None),
    ]
    assert rows[0]["params"] == {"train.lr": 0.2}
    assert pick_best(rows)["name"] == "good"
    assert pick_best(rows[:1]) is None


def test_command_line_sweep_ends_by_printing_the_table(monkeypatch, capsys):
    rows = experiment_rows(SHOWN, ["bad", "good"], ["train.lr"], "m.json:acc")
    table = sweep.table_text(sweep.sweep_table(rows, ["train.lr"], "m.json:acc", pick_best(rows)))
    monkeypatch.setattr(sweep, "liftplus_sweep", lambda **kwargs: {"table": table, "best": "good"})
    sweep.main(["--grid", '{"train.lr": [0.1, 0.2]}', "--metric", "m.json:acc"])
    printed = capsys.readouterr().out.rstrip("\n").splitlines()
    assert printed[-len(table.splitlines()) :] == table.splitlines(), "the table is the last thing printed"
    cells = {row[0]: row[1:] for row in map(table_cells, printed) if row}
    assert cells["experiment"] == [
        "status",
        "train.lr",
        "overall %",
        "mean per class %",
        "many %",
        "medium %",
        "few %",
        "m.json:acc",
    ]
    assert cells["good ★"] == ["success", "0.1", "71.50", "70.00", "80.25", "60.00", "—", "3"]
    assert cells["bad"] == ["failed", "0.2", "—", "—", "—", "—", "—", "—"]
    assert printed[-1].strip() == "Best (highest `m.json:acc`): good = 3"
