"""The paper-table flow: every (dataset, method) as a DVC experiment, then one row each.

On a fake project (fake_stage.py's stages, with an evaluate stage whose accuracy depends on
train.method) for the matrix and the table; one slow run on a copy of the real project."""

from __future__ import annotations

import csv
import json
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from fakeproject import FAKE_PARAMS, FAKE_STAGE, commit_all, dvc, experiment_values, fake_dvc_yaml, git_repo
from prefect.client.orchestration import get_client

from flows import PROJECT_ROOT, paper
from flows.paper import DEMO, PaperRefused, liftplus_paper, method_values, paper_markdown, parse_roots
from liftplus.params import ModelParams

# What the fake evaluate stage writes per method: overall, mean per class, many, medium, few.
ACCURACY = {
    "lift+": [81.5, 80.25, 84.0, 79.5, 70.75],
    "lp": [72.0, 70.5, 80.0, 65.25, 40.5],
    "fft": [75.0, 73.0, 82.0, 70.0, 50.0],
    "lift": [80.0, 79.0, 83.0, 78.0, 69.0],
    "zs": [60.0, 60.0, 61.0, 59.0, 58.0],
}
PAPER_EVAL = textwrap.dedent(f"""\
    import json, sys
    from pathlib import Path
    import yaml
    params = yaml.safe_load(Path("params.yaml").read_text())
    method = params["train"]["method"]
    if method in params["fake"]["fail_methods"]:
        print(f"error: evaluate: {{method}} fails on purpose", file=sys.stderr)
        sys.exit(1)
    acc, mean, many, medium, few = {ACCURACY!r}[method]
    Path("data/metrics").mkdir(parents=True, exist_ok=True)
    Path("data/metrics/eval.json").write_text(json.dumps({{"test": {{
        "acc": acc, "acc_mean_class": mean, "acc_many": many, "acc_medium": medium, "acc_few": few,
        "images": 30, "classes_many": 1, "classes_medium": 1, "classes_few": 1}}, "tte": True}}))
    Path("data/metrics/per_class.csv").write_text("class,train_count,accuracy\\nshoe,100,%s\\n" % many)
""")
FAKE_CLASSES = 3
"""The class count fake_stage.py's validate records (data/stats/longtail.json: dataset.classes)."""


def make_paper_project(repo: Path) -> Path:
    """The fake project with train.method and train.epochs in params.yaml, and an evaluate
    stage (paper_eval.py) that scores by method and fails for the methods in fake.fail_methods."""
    git_repo(repo)
    shutil.copy(FAKE_STAGE, repo / "fake_stage.py")
    (repo / "paper_eval.py").write_text(PAPER_EVAL)
    params = {key: dict(value) for key, value in FAKE_PARAMS.items()}
    params["train"].update(method="lift+", epochs=None)
    params["fake"]["fail_methods"] = ["zs"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stages = fake_dvc_yaml()
    stages["stages"]["train"]["params"] += ["train.method", "train.epochs"]
    stages["stages"]["evaluate"].update(
        cmd="python paper_eval.py",
        deps=["paper_eval.py", "data/model/adapter.pt"],
        params=["train.method", "fake.fail_methods"],
    )
    (repo / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))
    (repo / ".gitignore").write_text("/dvc_plots/\n/data/paper/\n")
    commit_all(repo, "fake paper project")
    return repo


@pytest.fixture
def paper_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FAKE_STATE_DIR", str(tmp_path))
    return make_paper_project(tmp_path / "project")


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def test_paper_table_has_a_row_per_method_with_its_numbers(prefect_api, paper_project, capsys):
    with pytest.raises(SystemExit) as ended:  # zs fails on purpose: the table is printed, then exit 1
        paper.main(["--datasets", DEMO, "--methods", "lift+,lp,zs", "--repo", str(paper_project)])
    assert ended.value.code == 1
    printed = capsys.readouterr().out.rstrip("\n").splitlines()

    with get_client(sync_client=True) as client:
        artifact = next(a for a in client.read_latest_artifacts(limit=50) if a.key == "liftplus-paper-table").data
    assert printed[-len(artifact.splitlines()) :] == artifact.rstrip("\n").splitlines(), (
        "the markdown printed last is the artifact"
    )

    table = [cells(line) for line in artifact.splitlines() if line.startswith("| ")]
    assert table[0] == [
        "dataset",
        "method",
        "experiment",
        "status",
        "overall %",
        "mean per class %",
        "many %",
        "medium %",
        "few %",
        "trainable params",
        "epochs",
        "train s",
        "run s",
    ]
    rows = {row[1]: row for row in table[1:]}
    assert list(rows) == ["lift+", "lp", "zs"] and all(row[0] == DEMO for row in rows.values())
    for method in ("lift+", "lp"):
        assert rows[method][3] == "success"
        assert rows[method][4:9] == [f"{value:.2f}" for value in ACCURACY[method]]
        assert float(rows[method][11]) > 0 and float(rows[method][12]) >= float(rows[method][11])
    assert rows["zs"][2:9] == ["—", "failed", "—", "—", "—", "—", "—"]
    assert "- demo × zs: failed: error: evaluate: zs fails on purpose" in artifact
    assert [rows[m][10] for m in ("lift+", "lp", "zs")] == ["5", "5", "0"], "the methods' default epochs"
    # Trainable parameters of the tiny model for the class count each experiment recorded (zs: demo's 10).
    expected = {
        method: paper.count_trainable(ModelParams().model_dump_json(), method, classes)
        for method, classes in (("lift+", FAKE_CLASSES), ("lp", FAKE_CLASSES), ("zs", 10))
    }
    assert [rows[m][9] for m in rows] == [f"{expected[m]:,}" for m in rows]
    assert 0 == expected["zs"] < expected["lp"] < expected["lift+"]

    # Each experiment is in `dvc exp show` with the method it ran; params.yaml is untouched.
    methods = experiment_values(paper_project, "params", "params.yaml", "train", "method")
    assert {methods[rows[m][2]] for m in ("lift+", "lp")} == {"lift+", "lp"}
    assert yaml.safe_load((paper_project / "params.yaml").read_text())["train"]["method"] == "lift+"

    # The DVC plot: the rows as CSV, which `dvc plots show` renders with the bar chart template.
    with (paper_project / paper.TABLE_FILE).open() as f:
        written = list(csv.DictReader(f))
    assert [(r["method"], r["status"], r["overall"], r["few"]) for r in written] == [
        ("lift+", "success", "81.5", "70.75"),
        ("lp", "success", "72.0", "40.5"),
        ("zs", "failed", "", ""),
    ]
    assert (paper_project / paper.PLOTS_OUT / "index.html").is_file()
    spec = json.loads(dvc(paper_project, *paper.plots_show_args(["--json"])).stdout)["data"]
    (plot,) = spec[paper.TABLE_FILE]
    assert plot["type"] == "vega"
    assert plot["content"]["encoding"]["row"]["field"] == "dataset"
    values = plot["content"]["data"]["values"]
    assert [(v["method"], v["overall"]) for v in values] == [("lift+", "81.5"), ("lp", "72.0"), ("zs", "")]


def test_a_preset_without_its_root_is_refused_in_one_line(capsys):
    with pytest.raises(SystemExit) as ended:
        paper.main(["--datasets", "demo,imagenet-lt", "--methods", "lift+,zs"])
    assert ended.value.code == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "error: dataset imagenet-lt needs the folder of its data: --root imagenet-lt=PATH\n"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--datasets", "demo,nope"], "error: --datasets: unknown 'nope'; choose from demo, "),
        (["--methods", "lift+,svm"], "error: --methods: unknown 'svm'; choose from lift+, lift, fft, lp, zs"),
        (["--root", "imagenet-lt"], "error: --root 'imagenet-lt': expected NAME=PATH"),
        (["--root", "imagenet-lt=/data"], "error: --root imagenet-lt=...: 'imagenet-lt' is not a preset dataset of"),
        (["--epochs", "0"], "error: --epochs is 0, expected at least 1"),
    ],
)
def test_requests_that_cannot_run_are_refused_before_prefect_starts(argv, message, capsys):
    with pytest.raises(SystemExit):
        paper.main(argv)
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_a_preset_keeps_its_own_choices_and_gives_each_method_its_recipe():
    roots = parse_roots(["inat2018=/data/inat", "imagenet-lt=/data/imagenet"], ["inat2018", "imagenet-lt"])
    plan = {
        (e["dataset"], e["method"]): e
        for e in paper.checked_plan("inat2018,imagenet-lt", "lift+,lift,fft,zs", roots, None, PROJECT_ROOT)
    }
    recipe = {
        key: (e["values"]["train.epochs"], e["values"]["train.lr"], e["values"]["train.mda"], e["epochs"])
        for key, e in plan.items()
    }
    assert recipe[("imagenet-lt", "lift+")] == (5, 0.02, True, 5)
    assert recipe[("imagenet-lt", "lift")] == (None, None, None, 10), "lift's own recipe: 10 epochs, lr 0.01"
    assert recipe[("imagenet-lt", "fft")] == (None, None, None, 5)
    assert recipe[("inat2018", "fft")] == (15, None, None, 15), "iNaturalist's 15 epochs are the dataset's"
    assert recipe[("inat2018", "zs")] == (None, None, None, 0), "zs trains nothing"
    assert all(e["values"]["data.root"] == "/data/inat" for (d, _), e in plan.items() if d == "inat2018")
    assert all(e["values"]["train.method"] == m for (_, m), e in plan.items())

    assert method_values({}, None, "lp", 1) == {"train.method": "lp", "train.epochs": 1}
    assert method_values({}, None, "zs", 1) == {"train.method": "zs"}


def test_coop_trains_in_the_reference_batch_of_32_and_checks_as_params():
    roots = parse_roots(["imagenet-lt=/data/imagenet"], ["imagenet-lt"])
    plan = {e["method"]: e for e in paper.checked_plan("imagenet-lt", "lift+,coop", roots, None, PROJECT_ROOT)}
    coop, lift_plus = plan["coop"]["values"], plan["lift+"]["values"]
    assert (coop["train.batch_size"], coop["train.micro_batch"]) == (32, 32), "configs/method/coop.yaml: batch 32"
    assert (lift_plus["train.batch_size"], lift_plus["train.micro_batch"]) == (128, 128)
    assert (coop["train.epochs"], coop["train.lr"], coop["train.mda"], plan["coop"]["epochs"]) == (None, None, None, 50)


def test_refusals_name_what_to_fix():
    with pytest.raises(PaperRefused, match="^dataset places-lt needs the folder of its data: --root places-lt=PATH$"):
        paper.checked_plan(["demo", "places-lt"], ["lp"], None, None, PROJECT_ROOT)
    with pytest.raises(PaperRefused, match="--methods: none given"):
        paper.checked_plan("demo", ",", None, None, PROJECT_ROOT)


def test_a_train_stage_restored_from_the_run_cache_reads_cached():
    plan = [{"dataset": DEMO, "method": "lp", "epochs": 5}]
    runs = [
        {"name": "e1", "error": None, "outcome": "restored from run cache", "train_seconds": None, "run_seconds": 4.25}
    ]
    shown = {"e1": {"status": "success", "accuracy": dict(zip(paper.ACCURACY_LABELS, ACCURACY["lp"], strict=True))}}
    rows = paper.paper_rows(plan, runs, shown, [1234])
    assert cells(paper_markdown(rows).splitlines()[4]) == [
        DEMO,
        "lp",
        "e1",
        "success",
        "72.00",
        "70.50",
        "80.00",
        "65.25",
        "40.50",
        "1,234",
        "5",
        "cached",
        "4.2",
    ]


@pytest.mark.slow
def test_real_project_lp_and_lift_plus_land_in_the_table(prefect_api, tmp_path):
    from pipeline_project import learnable_fashion_mnist, make_project

    repo = make_project(tmp_path / "project", learnable_fashion_mnist(tmp_path / "raw"))
    # The copy git-ignores data/ and dvclive/; the repository tracks the metrics files, and an
    # experiment keeps only what git would: track them here too.
    (repo / ".gitignore").write_text("/.prefect/\n__pycache__/\n/dvc_plots/\n/data/train_state/\n/data/paper/\n")
    commit_all(repo, "track the metrics files")
    result = liftplus_paper(datasets=[DEMO], methods=["lp", "lift+"], epochs=1, repo=str(repo))

    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["lp", "lift+"]
    for row in rows.values():
        assert row["status"] == "success" and row["epochs"] == 1
        assert all(0 <= row["accuracy"][label] <= 100 for label in ("overall", "mean per class"))
        assert row["train_seconds"] > 0 and row["run_seconds"] > row["train_seconds"]
    assert 0 < rows["lp"]["trainable_params"] < rows["lift+"]["trainable_params"]
    accuracies = experiment_values(repo, "metrics", "data/metrics/eval.json", "test", "acc")
    assert {row["experiment"]: row["accuracy"]["overall"] for row in rows.values()} == {
        row["experiment"]: accuracies[row["experiment"]] for row in rows.values()
    }
    assert f"| {DEMO} | lift+ | {rows['lift+']['experiment']} | success |" in result["markdown"]
    assert (repo / paper.TABLE_FILE).read_text().count("\n") == 3
