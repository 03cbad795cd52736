"""Split lists and class-name files as users really write them: odd labels, BOMs, repeats, paths that wander."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fake_raw_data import split_list_data
from faultkit import assert_nothing_left, assert_one_line_error, shard


def edit_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("label", ["²", "--1", "1.0", "0x1"])
def test_label_that_is_not_an_ascii_integer(label, tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    train_list = Path(data["train_list"])
    edit_line(train_list, 2, f"train/2/002.png {label}")
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, f"{train_list}:3: expected 'relative/path label', found 'train/2/002.png {label}'")
    assert_nothing_left(tmp_path / "out")


def test_byte_order_mark_is_not_part_of_the_first_class_name(tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    names = Path(data["classnames"])
    names.write_bytes(b"\xef\xbb\xbf" + names.read_bytes())
    train_list = Path(data["train_list"])
    train_list.write_bytes(b"\xef\xbb\xbf" + train_list.read_bytes())
    done, out = shard(tmp_path, params_file, **data)
    assert done.code == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classnames"] == ["cat", "dog", "owl"]
    assert manifest["splits"]["train"]["class_counts"] == [4, 4, 4]


def test_list_that_is_not_utf8(tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    train_list = Path(data["train_list"])
    train_list.write_bytes(train_list.read_bytes() + "caf\xe9.png 0\n".encode("latin-1"))
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, f"{train_list}: cannot read split list: not UTF-8 text (byte 0xe9 at position")
    assert_nothing_left(tmp_path / "out")


def test_duplicate_lines_are_counted_in_a_warning(tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    train_list = Path(data["train_list"])
    lines = train_list.read_text().splitlines()
    train_list.write_text("\n".join(lines + [lines[1], lines[1], lines[5]]) + "\n")
    done, out = shard(tmp_path, params_file, **data)
    assert done.code == 0, done.stderr
    assert f"warning: {train_list}: 3 duplicate line(s)" in done.stderr
    assert "(first: line 13 repeats line 2)" in done.stderr
    assert json.loads((out / "manifest.json").read_text())["splits"]["train"]["num_samples"] == 15


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_listed_path_that_leaves_the_root(how, tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    root = Path(data["root"])
    outside = tmp_path / "raw" / "secret.png"
    outside.write_bytes((root / "train/0/000.png").read_bytes())
    entry = {"dotdot": "../secret.png", "absolute": str(outside), "symlink": "train/0/link.png"}[how]
    if how == "symlink":
        os.symlink(outside, root / "train/0/link.png")
    train_list = Path(data["train_list"])
    edit_line(train_list, 0, f"{entry} 0")
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, f"{train_list}:1: {entry} leaves data.root {root}", "data.allow_outside_root: true")
    assert_nothing_left(tmp_path / "out")

    done, out = shard(tmp_path, params_file, **data, allow_outside_root=True)
    assert done.code == 0, done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["class_counts"] == [4, 4, 4]


def test_imbalance_ratio_is_refused_for_lists_that_are_long_tailed_already(tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    done, out = shard(tmp_path, params_file, **{**data, "imbalance_ratio": 100})
    assert_one_line_error(
        done, "data.imbalance_ratio is 100, but split lists are already long-tailed", "set data.imbalance_ratio: 1"
    )
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("param", ["train_list", "classnames"])
def test_list_outside_the_folders_dvc_tracks(param, tmp_path, params_file):
    """A file outside data.lists and data.root is no DVC dep: editing it would never re-shard."""
    data = split_list_data(tmp_path / "raw")
    elsewhere = tmp_path / "elsewhere" / Path(data[param]).name
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(Path(data[param]).read_bytes())
    done, out = shard(tmp_path, params_file, **{**data, param: str(elsewhere)})
    assert_one_line_error(
        done, f"data.{param} {elsewhere}: outside data.lists ({data['lists']}) and data.root", "move it into data.lists"
    )
    assert_nothing_left(tmp_path / "out")
