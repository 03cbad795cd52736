"""Split lists are DVC deps: an edit in place is seen by `dvc status` and re-shards, never restores stale shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from pipeline_project import make_project, run

pytestmark = pytest.mark.slow

NAMES = ("cat", "dog", "owl")


def image_tree(root, per_class: int) -> dict[str, list[str]]:
    """Small PNGs under ``root/<split>/<class>/``; the split lists' lines."""
    rng = np.random.default_rng(0)
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, count in (("train", per_class), ("test", 2)):
        for label, name in enumerate(NAMES):
            for i in range(count):
                relative = f"{split}/{name}/{i:03d}.png"
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / relative)
                lines[split].append(f"{relative} {label}")
    return lines


def test_editing_a_split_list_in_place_reshards(tmp_path):
    lines = image_tree(tmp_path / "images", per_class=4)
    project = make_project(
        tmp_path / "project",
        tmp_path / "images",
        data={
            "source": "split-list",
            "imbalance_ratio": 1,
            "classnames": "lists/mine/classnames.txt",
            "train_list": "lists/mine/train.txt",
            "test_list": "lists/mine/test.txt",
        },
    )
    mine = project / "lists" / "mine"
    mine.mkdir()
    (mine / "classnames.txt").write_text("\n".join(NAMES) + "\n")
    (mine / "test.txt").write_text("\n".join(lines["test"]) + "\n")
    train_list = mine / "train.txt"
    train_list.write_text("\n".join(lines["train"]) + "\n")
    manifest = project / "data" / "shards" / "manifest.json"

    run(["dvc", "repro", "shard"], project)
    assert json.loads(manifest.read_text())["splits"]["train"]["class_counts"] == [4, 4, 4]
    assert "up to date" in run(["dvc", "status", "shard"], project).stdout

    train_list.write_text("\n".join(lines["train"][:-2]) + "\n")  # the owl loses two images
    status = run(["dvc", "status", "shard"], project).stdout
    assert "changed deps" in status and "modified:" in status and "lists" in status, status

    result = run(["dvc", "repro", "shard"], project)
    assert "Running stage 'shard'" in result.stdout
    assert json.loads(manifest.read_text())["splits"]["train"]["class_counts"] == [4, 4, 2]

    train_list.write_text("\n".join(lines["train"]) + "\n")  # back as it was: DVC's run cache restores it
    run(["dvc", "repro", "shard"], project)
    assert json.loads(manifest.read_text())["splits"]["train"]["class_counts"] == [4, 4, 4]
