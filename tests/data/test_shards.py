import io
import re
import tarfile

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from liftplus.data.images import encode_png
from liftplus.data.shard_reader import iter_shard
from liftplus.data.shard_writer import atomic_directory, write_split_shards
from liftplus.data.sources import Record
from liftplus.errors import DataError
from liftplus.io import sha256_file


def records(n=25, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out.append((Record(f"train-{i:08d}", i % 4, encode_png(pixels), "png", f"src#{i}"), pixels))
    return out


def test_round_trip_keys_labels_pixels_and_source(tmp_path):
    written = records(25)
    shards = write_split_shards((r for r, _ in written), tmp_path, "train", 10, 1 << 30)
    assert [s["name"] for s in shards] == [f"train-00000{i}.tar" for i in range(3)]
    assert [s["num_samples"] for s in shards] == [10, 10, 5]
    for shard in shards:
        path = tmp_path / shard["name"]
        assert shard["sha256"] == sha256_file(path) and shard["bytes"] == path.stat().st_size
    read = [s for shard in shards for s in iter_shard(tmp_path / shard["name"])]
    assert len(read) == 25
    for (record, pixels), (key, label, image, ext, meta) in zip(written, read):
        assert (key, label, ext) == (record.key, record.label, "png")
        assert meta == {"label": record.label, "source": record.source}
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(image))), pixels)


def test_webdataset_reads_the_shards(tmp_path):
    written = records(6)
    write_split_shards((r for r, _ in written), tmp_path, "test", 100, 1 << 30)
    dataset = wds.WebDataset(str(tmp_path / "test-000000.tar"), shardshuffle=False)
    samples = list(dataset)
    assert [s["__key__"] for s in samples] == [r.key for r, _ in written]
    assert [int(s["cls"]) for s in samples] == [r.label for r, _ in written]
    assert samples[2]["png"] == written[2][0].image


def test_tar_members_have_fixed_metadata(tmp_path):
    write_split_shards((r for r, _ in records(2)), tmp_path, "train", 100, 1 << 30)
    with tarfile.open(tmp_path / "train-000000.tar") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == [
        "train-00000000.cls", "train-00000000.json", "train-00000000.png",
        "train-00000001.cls", "train-00000001.json", "train-00000001.png",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == {
        (0, 0, 0, "liftplus", 0o444)
    }


def test_rerun_gives_byte_identical_tars(tmp_path):
    runs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        written = (r for r, _ in records(25))
        runs.append(write_split_shards(written, tmp_path / name, "train", 7, 1 << 30))
    assert runs[0] == runs[1]
    for shard in runs[0]:
        first, second = (tmp_path / run / shard["name"] for run in ("a", "b"))
        assert first.read_bytes() == second.read_bytes()


def test_max_bytes_bounds_every_shard(tmp_path):
    written = records(40)
    limit = 40 * 1024
    shards = write_split_shards((r for r, _ in written), tmp_path, "train", 1000, limit)
    assert len(shards) > 1
    assert sum(s["num_samples"] for s in shards) == 40
    assert all(s["bytes"] <= limit for s in shards)


def test_no_records_no_shards(tmp_path):
    assert write_split_shards(iter(()), tmp_path, "val", 10, 1 << 30) == []
    assert list(tmp_path.iterdir()) == []


def one_shard(tmp_path, n=5):
    write_split_shards((r for r, _ in records(n)), tmp_path, "train", 100, 1 << 30)
    return tmp_path / "train-000000.tar"


@pytest.mark.parametrize("cut", ["mid_member", "member_boundary", "garbage"])
def test_corrupt_or_truncated_shard_is_named(tmp_path, cut):
    path = one_shard(tmp_path)
    content = path.read_bytes()
    if cut == "mid_member":
        content = content[:3000]
    elif cut == "member_boundary":
        with tarfile.open(path) as tar:
            last = tar.getmembers()[-1]
        content = content[: last.offset_data + -(-last.size // 512) * 512]
    else:
        content = b"\x17" * 5000
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(f"{path}: corrupt or truncated shard")):
        list(iter_shard(path))


def test_missing_shard(tmp_path):
    with pytest.raises(DataError, match="train-000009.tar: shard not found"):
        list(iter_shard(tmp_path / "train-000009.tar"))


def test_atomic_directory_replaces_only_on_success(tmp_path):
    final = tmp_path / "shards"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]
    assert (final / "old.txt").read_text() == "old"
    with atomic_directory(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["shards"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]
