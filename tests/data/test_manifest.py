import json
import re

import pytest

from liftplus.data.manifest import (
    build_manifest, read_manifest, shard_paths, split_entry, verify_checksums,
)
from liftplus.data.shard_writer import write_split_shards
from liftplus.data.sources import Record
from liftplus.errors import DataError
from liftplus.io import write_json


def shard_dir_with_manifest(tmp_path):
    records = [Record(f"train-{i:08d}", i % 2, bytes([i]) * 50, "png", f"s{i}") for i in range(5)]
    shards = write_split_shards(iter(records), tmp_path, "train", 3, 1 << 30)
    test = write_split_shards(iter(records[:2]), tmp_path, "test", 3, 1 << 30)
    manifest = build_manifest("imagefolder", ["even", "odd"], {
        "test": split_entry([1, 1], test),
        "train": split_entry([3, 2], shards, [{"source": "bad.jpg", "error": "cannot decode"}]),
    })
    write_json(tmp_path / "manifest.json", manifest)
    return manifest


def test_manifest_layout(tmp_path):
    manifest = shard_dir_with_manifest(tmp_path)
    assert read_manifest(tmp_path / "manifest.json") == manifest
    assert list(manifest) == ["format", "source", "classnames", "num_classes", "splits"]
    assert manifest["format"] == "liftplus-shards/1"
    assert manifest["num_classes"] == 2
    assert list(manifest["splits"]) == ["train", "test"]
    train = manifest["splits"]["train"]
    assert train["num_samples"] == 5 and train["class_counts"] == [3, 2]
    assert [s["num_samples"] for s in train["shards"]] == [3, 2]
    assert set(train["shards"][0]) == {"name", "sha256", "num_samples", "bytes"}
    assert train["skipped"] == [{"source": "bad.jpg", "error": "cannot decode"}]
    assert shard_paths(manifest, tmp_path, "train") == [
        tmp_path / "train-000000.tar", tmp_path / "train-000001.tar"]


def test_checksums_pass_then_name_the_changed_shard(tmp_path):
    manifest = shard_dir_with_manifest(tmp_path)
    verify_checksums(manifest, tmp_path)
    path = tmp_path / "train-000001.tar"
    content = bytearray(path.read_bytes())
    content[600] ^= 0xFF
    path.write_bytes(bytes(content))
    verify_checksums(manifest, tmp_path, splits=["test"])
    with pytest.raises(DataError, match=re.escape(f"{path}: sha256 ") + ".*does not match"):
        verify_checksums(manifest, tmp_path)


def test_missing_shard(tmp_path):
    manifest = shard_dir_with_manifest(tmp_path)
    (tmp_path / "test-000000.tar").unlink()
    with pytest.raises(DataError, match=r"test-000000\.tar: shard listed in the manifest is"):
        verify_checksums(manifest, tmp_path)


def test_unknown_split(tmp_path):
    manifest = shard_dir_with_manifest(tmp_path)
    with pytest.raises(DataError, match="no 'val' split"):
        shard_paths(manifest, tmp_path, "val")


def first_train_shard(manifest):
    return manifest["splits"]["train"]["shards"][0]


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.pop("classnames"), "missing key 'classnames'"),
    (lambda m: m["splits"]["train"].pop("class_counts"), "missing key 'splits.train.class_counts'"),
    (lambda m: m.update(format="other/2"), "'format' is 'other/2'"),
    (lambda m: m["splits"]["train"].update(class_counts=[5]),
     "'splits.train.class_counts' must be 2 counts"),
    (lambda m: m["splits"]["test"].update(num_samples=9), "'splits.test.num_samples' is 9"),
    # fields of the wrong type: each used to pass and fail later inside sum(), a slice or a Path
    (lambda m: m.update(num_classes="2"), "'num_classes' is '2', expected an integer >= 0"),
    (lambda m: m.update(num_classes=True), "'num_classes' is True, expected an integer >= 0"),
    (lambda m: m.update(source=["imagefolder"]), "'source' is list, expected a string"),
    (lambda m: m["classnames"].__setitem__(1, 3), "'classnames' must be a list of strings"),
    (lambda m: m["splits"]["train"].update(num_samples="5"), "'splits.train.num_samples' is '5', expected an integer"),
    (lambda m: m["splits"]["train"].update(skipped={"source": "bad.jpg"}), "'splits.train.skipped' must be a list"),
    (lambda m: m["splits"]["train"].update(skipped=[{"source": "bad.jpg", "error": 3}]),
     "'splits.train.skipped' must be a list of"),
    (lambda m: first_train_shard(m).update(sha256=7), "'splits.train.shards[0].sha256' is 7, expected 64 lowercase hex"),
    (lambda m: first_train_shard(m).update(sha256="AB" * 32), "'splits.train.shards[0].sha256' is 'ABAB"),
    (lambda m: first_train_shard(m).update(num_samples="3"),
     "'splits.train.shards[0].num_samples' is '3', expected an integer >= 0"),
    (lambda m: first_train_shard(m).update(num_samples=-1), "'splits.train.shards[0].num_samples' is -1"),
    (lambda m: first_train_shard(m).update(bytes=None), "'splits.train.shards[0].bytes' is None, expected an integer"),
    (lambda m: first_train_shard(m).update(name="../train-000000.tar"),
     "'splits.train.shards[0].name' is '../train-000000.tar', expected a plain file name"),
    (lambda m: first_train_shard(m).update(name=12), "'splits.train.shards[0].name' is 12, expected a plain file name"),
])
def test_invalid_manifest_names_path_and_key(tmp_path, edit, message):
    manifest = shard_dir_with_manifest(tmp_path)
    edit(manifest)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError) as refused:
        read_manifest(path)
    assert str(refused.value).startswith(f"{path}: {message}")
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200 + len(str(path))


def test_missing_or_malformed_file(tmp_path):
    with pytest.raises(DataError, match=r"manifest\.json: manifest not found"):
        read_manifest(tmp_path / "manifest.json")
    (tmp_path / "manifest.json").write_text('{"format": ')
    with pytest.raises(DataError, match=r"manifest\.json: not valid JSON \(line 1"):
        read_manifest(tmp_path / "manifest.json")

