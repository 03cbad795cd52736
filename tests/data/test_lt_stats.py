import json

import pytest
import typer
from typer.testing import CliRunner

from liftplus.commands.lt_stats import lt_stats
from liftplus.errors import exit_on_error

app = typer.Typer()
app.command("lt-stats")(exit_on_error(lt_stats))  # as liftplus/cli.py registers it
app.command("other")(lambda: None)  # two commands, so lt-stats is a sub-command as in the real CLI
runner = CliRunner()


@pytest.fixture()
def split_list(tmp_path):
    counts = [150, 60, 20, 19, 3]  # many 1, medium 2, few 2, IR 50
    path = tmp_path / "train.txt"
    path.write_text("".join(f"images/{label}/{i}.jpg {label}\n"
                            for label, n in enumerate(counts) for i in range(n)))
    return path


@pytest.fixture()
def manifest(tmp_path):
    path = tmp_path / "shards" / "manifest.json"
    path.parent.mkdir()
    path.write_text(json.dumps({
        "format": "liftplus-shards/1", "source": "fashion-mnist",
        "classnames": ["a", "b", "c"], "num_classes": 3,
        "splits": {
            "train": {"num_samples": 660, "class_counts": [600, 50, 10], "skipped": [],
                      "shards": [{"name": "train-000000.tar", "sha256": "0" * 64, "num_samples": 660,
                                  "bytes": 10240}]},
            "test": {"num_samples": 30, "class_counts": [10, 10, 10], "skipped": [],
                     "shards": [{"name": "test-000000.tar", "sha256": "0" * 64, "num_samples": 30,
                                 "bytes": 10240}]},
        },
    }))
    return path


def run(*args):
    return runner.invoke(app, ["lt-stats", *map(str, args)])


def test_split_list_as_json(split_list):
    result = run(split_list, "--json")
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["num_classes"] == 5 and stats["num_samples"] == 252
    assert (stats["max"], stats["min"]) == (150, 3)
    assert stats["imbalance_ratio"] == pytest.approx(50.0)
    assert (stats["many"], stats["medium"], stats["few"]) == (1, 2, 2)
    assert stats["head_share"] == pytest.approx(150 / 252)
    assert stats["tail_share"] == pytest.approx(22 / 252)
    assert stats["split"] is None


def test_split_list_as_table(split_list):
    result = run(split_list)
    assert result.exit_code == 0, result.output
    lines = {line.strip("│ ").split("│")[0].strip(): line.split("│")[-2].strip()
             for line in result.output.splitlines() if line.count("│") >= 3}
    assert lines["classes"] == "5"
    assert lines["images"] == "252"
    assert lines["imbalance ratio (max / min)"] == "50.00"
    assert lines["few classes (< 20)"] == "2"
    assert lines["head share (images in many)"] == "59.5%"


def test_manifest_split_as_json(manifest):
    train = json.loads(run(manifest, "--json").output)
    assert (train["num_samples"], train["imbalance_ratio"], train["split"]) == (660, 60.0, "train")
    assert (train["many"], train["medium"], train["few"]) == (1, 1, 1)
    test = json.loads(run(manifest.parent, "--json", "--split", "test").output)
    assert (test["num_samples"], test["imbalance_ratio"], test["few"]) == (30, 1.0, 3)


def test_manifest_as_table(manifest):
    result = run(manifest)
    assert result.exit_code == 0, result.output
    assert "(train)" in result.output and "60.00" in result.output and "660" in result.output


def test_empty_class_is_warned_about(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.jpg 0\nb.jpg 2\n")
    result = run(path)
    assert result.exit_code == 0
    assert "1 class(es) with no image (labels 1)" in result.output
    assert "n/a" in result.output
    assert json.loads(run(path, "--json").output)["imbalance_ratio"] is None


@pytest.mark.parametrize("args, message", [
    (["missing.txt"], "missing.txt: split list not found"),
    (["shards/manifest.json", "--split", "val"], "no split 'val' (splits: train, test)"),
    (["nowhere.json"], "nowhere.json: manifest not found"),
])
def test_bad_input_is_one_error_line(manifest, tmp_path, args, message):
    result = run(*[tmp_path / args[0], *args[1:]])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("error: ")
    assert message in result.output


def image_tree(root, counts, split=None):
    """Empty-but-named image files: lt-stats counts files, it decodes nothing."""
    for label, n in enumerate(counts):
        folder = root / (split or "") / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(n):
            (folder / f"{i}.jpg").write_bytes(b"")
        (folder / "notes.txt").write_text("not an image")


def test_image_folder_tree_before_sharding(tmp_path):
    image_tree(tmp_path / "flat", [120, 40, 40, 6])
    stats = json.loads(run(tmp_path / "flat", "--json").output)
    assert (stats["num_classes"], stats["num_samples"], stats["imbalance_ratio"]) == (4, 206, 20.0)
    assert (stats["many"], stats["medium"], stats["few"]) == (1, 2, 1)

    image_tree(tmp_path / "split", [30, 5], split="train")
    image_tree(tmp_path / "split", [2, 2], split="test")
    train = json.loads(run(tmp_path / "split", "--json").output)
    assert (train["num_samples"], train["imbalance_ratio"], train["split"]) == (35, 6.0, "train")
    test = json.loads(run(tmp_path / "split", "--json", "--split", "test").output)
    assert (test["num_samples"], test["imbalance_ratio"]) == (4, 1.0)
    result = run(tmp_path / "split", "--split", "val")
    assert result.exit_code == 1 and "no 'val' folder (found: train, test)" in result.output
