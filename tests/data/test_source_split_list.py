import json
import re

import numpy as np
import pytest

from fake_raw_data import save_image
from liftplus.data.sources import open_source
from liftplus.errors import DataError

COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250)]


def make_tree(tmp_path, names=("cat", "dog", "great white shark")):
    """Three classes of small JPEGs under root/, lists and a classnames file beside it."""
    root = tmp_path / "root"
    lines = {"train": [], "test": []}
    for split, per_class in (("train", 3), ("test", 1)):
        for label in range(len(names)):
            for i in range(per_class):
                relative = f"{split}/c{label}/{i:03d}.jpg"
                save_image(root / relative, (48, 32), COLORS[label % 3], "JPEG")
                lines[split].append(f"{relative} {label}")
    (tmp_path / "train.txt").write_text("\n".join(lines["train"]) + "\n\n")
    (tmp_path / "test.txt").write_text("\n".join(lines["test"]) + "\n")
    (tmp_path / "classnames.txt").write_text("\n".join(names) + "\n")
    return root


def params(tmp_path, data_params, **overrides):
    values = dict(source="split-list", root=str(tmp_path / "root"), lists=str(tmp_path), imbalance_ratio=1,
                  classnames=str(tmp_path / "classnames.txt"),
                  train_list=str(tmp_path / "train.txt"), test_list=str(tmp_path / "test.txt"))
    values.update(overrides)
    return data_params(**values)


def test_reads_lists_in_order_with_class_names(tmp_path, data_params):
    root = make_tree(tmp_path)
    source = open_source(params(tmp_path, data_params))
    assert source.classnames == ["cat", "dog", "great white shark"]
    assert set(source.splits) == {"train", "test"}
    train = list(source.splits["train"]())
    assert [r.label for r in train] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert train[4].source == "train/c1/001.jpg"
    assert train[4].key == "train-00000004"
    assert train[4].image == (root / "train/c1/001.jpg").read_bytes()
    assert source.skipped["train"] == []


def test_val_list_is_optional_and_used_when_given(tmp_path, data_params):
    make_tree(tmp_path)
    (tmp_path / "val.txt").write_text("test/c2/000.jpg 2\n")
    source = open_source(params(tmp_path, data_params, val_list=str(tmp_path / "val.txt")))
    assert [r.label for r in source.splits["val"]()] == [2]


def test_inaturalist_categories_json_ordered_by_id(tmp_path, data_params):
    make_tree(tmp_path)
    categories = [{"id": 2, "name": "Zebra"}, {"id": 0, "name": "Aardvark"},
                  {"id": 1, "name": "Moth"}]
    (tmp_path / "categories.json").write_text(json.dumps(categories))
    categories_path = str(tmp_path / "categories.json")
    source = open_source(params(tmp_path, data_params, classnames=categories_path))
    assert source.classnames == ["Aardvark", "Moth", "Zebra"]


def test_label_out_of_range_names_file_and_line(tmp_path, data_params):
    make_tree(tmp_path)
    lines = (tmp_path / "test.txt").read_text().splitlines()
    lines[1] = "test/c1/000.jpg 3"
    (tmp_path / "test.txt").write_text("\n".join(lines))
    expected = re.escape(f"{tmp_path / 'test.txt'}:2: label 3 outside [0, 3)")
    with pytest.raises(DataError, match=expected):
        open_source(params(tmp_path, data_params))


def test_malformed_line(tmp_path, data_params):
    make_tree(tmp_path)
    (tmp_path / "test.txt").write_text("test/c0/000.jpg zero\n")
    with pytest.raises(DataError, match=r"test\.txt:1: expected 'relative/path label'"):
        open_source(params(tmp_path, data_params))


@pytest.mark.parametrize("names, message", [
    (["cat", "dog", "shark", "eel"], r"classnames\.txt: 4 class names, .*run 0\.\.2 \(expected 3"),
    (["cat", "dog"], r"train\.txt:7: label 2 outside \[0, 2\)"),
])
def test_wrong_number_of_class_names(tmp_path, data_params, names, message):
    make_tree(tmp_path)
    (tmp_path / "classnames.txt").write_text("\n".join(names) + "\n")
    with pytest.raises(DataError, match=message):
        open_source(params(tmp_path, data_params))


def test_duplicate_class_names(tmp_path, data_params):
    make_tree(tmp_path)
    (tmp_path / "classnames.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(DataError, match=r"classnames\.txt:3: duplicate class name 'cat' .*:1\)"):
        open_source(params(tmp_path, data_params))


def test_missing_inputs_name_the_param(tmp_path, data_params):
    make_tree(tmp_path)
    with pytest.raises(DataError, match=r"data\.root .*nope: folder not found"):
        open_source(params(tmp_path, data_params, root=str(tmp_path / "nope")))
    with pytest.raises(DataError, match=r"data\.test_list .*absent\.txt: file not found"):
        open_source(params(tmp_path, data_params, test_list=str(tmp_path / "absent.txt")))
    with pytest.raises(DataError, match=r"data\.classnames is not set"):
        open_source(params(tmp_path, data_params, classnames=None))


def break_one_image(root):
    broken = root / "train/c1/002.jpg"
    broken.write_bytes(b"\xff\xd8 definitely not a JPEG")
    return broken


def test_undecodable_image_fails_by_default(tmp_path, data_params):
    broken = break_one_image(make_tree(tmp_path))
    source = open_source(params(tmp_path, data_params))
    with pytest.raises(DataError, match=re.escape(f"{broken}: cannot decode")):
        list(source.splits["train"]())


def test_undecodable_image_is_skipped_and_recorded(tmp_path, data_params):
    root = make_tree(tmp_path)
    break_one_image(root)
    (root / "train/c2/000.jpg").unlink()
    source = open_source(params(tmp_path, data_params, on_decode_error="skip"))
    train = list(source.splits["train"]())
    assert np.bincount([r.label for r in train]).tolist() == [3, 2, 2]
    assert [s.source for s in source.skipped["train"]] == ["train/c1/002.jpg", "train/c2/000.jpg"]
    assert source.skipped["train"][0].error.startswith("cannot decode")
    assert source.skipped["train"][1].error.startswith("cannot read")
    list(source.splits["train"]())
    assert len(source.skipped["train"]) == 2
