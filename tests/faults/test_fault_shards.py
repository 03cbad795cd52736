"""Shards damaged after the shard stage wrote them: every reader names the shard and writes nothing."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest
from faultkit import assert_nothing_left, assert_one_line_error, invoke, write_params
from stageproc import train_args


def copy_shards(shards: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shards, tmp_path / "shards"))


def truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def alter_quietly(path: Path) -> None:
    """Change one digit of a sample's recorded source: the tar still reads, its sha256 changed."""
    content = bytearray(path.read_bytes())
    at = content.index(b".gz#") + 4
    content[at] = ord("7") if content[at] != ord("7") else ord("3")
    path.write_bytes(bytes(content))


def relabel(path: Path, sample: int, label: bytes) -> str:
    """Rewrite ``path`` with the ``sample``-th ``.cls`` member set to ``label``; return that sample's key."""
    members = []
    with tarfile.open(path) as tar:
        for member in tar:
            members.append((member, tar.extractfile(member).read()))
    cls_members = [m for m, _ in members if m.name.endswith(".cls")]
    target = cls_members[sample]
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if member is target:
                data = label
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return target.name.split(".")[0]


def run(stage: str, params: Path, shards: Path, tmp_path: Path, head: Path, checkpoint: Path):
    out = tmp_path / "out"
    inputs = ["--params", params, "--shards", shards]
    args = {
        "validate": [*inputs, "--out", out / "stats"],
        "train": train_args(params, shards, head, out),
        "evaluate": [*inputs, "--model", checkpoint, "--out", out / "metrics"],
    }[stage]
    return invoke(stage, *args), out


@pytest.mark.parametrize("stage, split", [("validate", "train"), ("train", "train"), ("evaluate", "test")])
def test_truncated_tar(stage, split, tmp_path, params_file, shards, head, checkpoint):
    shards = copy_shards(shards, tmp_path)
    tar = shards / f"{split}-000000.tar"
    truncate(tar)
    done, out = run(stage, params_file, shards, tmp_path, head, checkpoint)
    line = assert_one_line_error(done, str(tar) if stage != "validate" else tar.name)
    assert "truncated" in line or "corrupt" in line
    assert_nothing_left(out)


@pytest.mark.parametrize("stage", ["validate", "train"])
def test_shard_checksum_no_longer_matches_manifest(stage, tmp_path, params_file, shards, head, checkpoint):
    shards = copy_shards(shards, tmp_path)
    tar = shards / "train-000000.tar"
    alter_quietly(tar)
    params = write_params(
        tmp_path / "params.yaml", params_file, validate={"verify_checksums": True}, train={"verify_checksums": True}
    )
    done, out = run(stage, params, shards, tmp_path, head, checkpoint)
    assert_one_line_error(done, f"{tar}: sha256", "does not match the manifest's")
    assert_nothing_left(out)


@pytest.mark.parametrize("stage, split", [("train", "train"), ("evaluate", "test")])
def test_shard_label_outside_class_range(stage, split, tmp_path, params_file, shards, head, checkpoint):
    shards = copy_shards(shards, tmp_path)
    tar = shards / f"{split}-000000.tar"
    key = relabel(tar, 3, b"10")
    done, out = run(stage, params_file, shards, tmp_path, head, checkpoint)
    assert_one_line_error(done, f"{tar}: sample {key} has label 10, expected 0..9")
    assert_nothing_left(out)
