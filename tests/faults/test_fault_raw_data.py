"""Bad raw data stops the shard stage with one line naming the file, and leaves no shards behind."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from fake_raw_data import SPLIT_LIST_NAMES as NAMES
from fake_raw_data import split_list_data
from faultkit import assert_nothing_left, assert_one_line_error, invoke, run_stage, shard, tree, write_params
from PIL import Image


def test_missing_raw_data(tmp_path, params_file):
    missing = tmp_path / "no-such-folder"
    params = write_params(tmp_path / "params.yaml", params_file, data={"root": str(missing)})
    out = tmp_path / "out" / "shards"
    done = run_stage("shard", "--params", params, "--out", out)
    assert_one_line_error(done, f"data.root {missing}: folder not found", "idx files expected")
    assert done.stderr.count("\n") == 1
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize("how", ["env", "flag"])
def test_debug_shows_the_traceback_once(how, tmp_path, params_file):
    missing = tmp_path / "no-such-folder"
    params = write_params(tmp_path / "params.yaml", params_file, data={"root": str(missing)})
    args = ["--params", params, "--out", tmp_path / "out" / "shards"]
    done = run_stage("shard", *args, "--debug") if how == "flag" else run_stage("shard", *args, LIFTPLUS_DEBUG="1")
    assert done.code != 0
    assert done.stderr.count("Traceback (most recent call last)") == 1
    assert (
        done.last_line
        == f"liftplus.errors.DataError: data.root {missing}: folder not found (fashion-mnist idx files expected)"
    )
    assert "open_fashion_mnist" in done.stderr
    assert_nothing_left(tmp_path / "out")


def truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("garbage", "cannot decode"),
        ("truncated", "cannot decode"),
        ("missing", "cannot read: No such file or directory"),
    ],
)
def test_unreadable_image_in_split_list(damage, reason, tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    # the ninth training image: two 4-sample shards of this split are already written when it fails
    bad = Path(data["root"]) / "train/2/008.png"
    if damage == "garbage":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    elif damage == "truncated":
        bad.write_bytes(truncated_jpeg())
    else:
        bad.unlink()
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, f"{bad}: {reason}", "data.on_decode_error: skip")
    assert_nothing_left(tmp_path / "out")


def test_label_outside_class_range(tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    train_list = Path(data["train_list"])
    lines = train_list.read_text().splitlines()
    lines[4] = lines[4].rsplit(maxsplit=1)[0] + " 3"
    train_list.write_text("\n".join(lines) + "\n")
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, f"{train_list}:5: label 3 outside [0, 3) (3 class names)")
    assert_nothing_left(tmp_path / "out")


@pytest.mark.parametrize(
    "names, expected",
    [
        (NAMES + ["emu"], "{names}: 4 class names, but the labels in {train} run 0..2 (expected 3 names)"),
        (NAMES[:2], "{train}:3: label 2 outside [0, 2) (2 class names)"),
    ],
)
def test_classnames_file_with_wrong_number_of_lines(names, expected, tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    Path(data["classnames"]).write_text("\n".join(names) + "\n")
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, expected.format(names=data["classnames"], train=data["train_list"]))
    assert_nothing_left(tmp_path / "out")


def test_duplicate_class_names(tmp_path, params_file):
    data = split_list_data(tmp_path / "raw")
    Path(data["classnames"]).write_text("cat\ndog\ncat\n")
    done, out = shard(tmp_path, params_file, **data)
    assert_one_line_error(done, f"{data['classnames']}:3: duplicate class name 'cat' (first at {data['classnames']}:1)")
    assert_nothing_left(tmp_path / "out")


def test_class_with_no_training_image_fails_validate(tmp_path, params_file):
    """The shards of a list that never uses label 1 are written; validate refuses them."""
    data = split_list_data(tmp_path / "raw", train_labels=(0, 2) * 4)
    done, shards = shard(tmp_path, params_file, **data)
    assert done.code == 0, done.stderr
    params = tmp_path / "params.yaml"
    stats = tmp_path / "out" / "stats"
    done = invoke("validate", "--params", params, "--shards", shards, "--out", stats)
    assert_one_line_error(done, f"failed on {shards}", "train classes have no image", "label 1 (dog)")
    assert not stats.exists()


class Payload:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_with_code_execution_payload(tmp_path, params_file):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    marker = tmp_path / "payload-ran"
    names = [f"class{i}" for i in range(3)]
    (root / "meta").write_bytes(pickle.dumps({"fine_label_names": names}, protocol=2))
    (root / "test").write_bytes(
        pickle.dumps({"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 1, 2]}, protocol=2)
    )
    (root / "train").write_bytes(
        pickle.dumps(
            {"data": np.zeros((3, 3072), np.uint8), "fine_labels": [0, 1, 2], "x": Payload(marker)}, protocol=2
        )
    )
    params = write_params(tmp_path / "params.yaml", params_file, data={"source": "cifar100", "root": str(root)})
    done = run_stage("shard", "--params", params, "--out", tmp_path / "out" / "shards")
    line = assert_one_line_error(done, f"{root / 'train'}: refused or unreadable CIFAR pickle")
    assert re.search(r"global '(posix|os)\.system' is not allowed", line), line
    assert not marker.exists()
    assert_nothing_left(tmp_path / "out")
    assert tree(tmp_path / "out") == {}
