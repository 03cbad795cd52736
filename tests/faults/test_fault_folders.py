"""A user's image folder that lies: links, FIFOs, devices, stray files, one class, huge images.

The shard stage reads regular image files only, walks each real folder
once, refuses links that leave ``data.root``, lists what it does not read,
holds a seeded, stratified test split out of a flat folder and makes its
train split long-tailed.
"""

from __future__ import annotations

import json
import os
import resource
from collections import Counter
from pathlib import Path

import pytest
from fake_raw_data import png
from faultkit import assert_nothing_left, assert_one_line_error, invoke, run_stage, write_params
from PIL import Image

from liftplus.data.shard_reader import iter_shard
from liftplus.data.sources.longtail_subsample import longtail_counts

MEMORY_LIMIT = 2 << 30
"""Heap of a stage process that must never read a device: reading /dev/zero there ends in MemoryError."""


def image_folder(root: Path, counts: dict[str, int]) -> Path:
    """``root/<class>/<i>.png``, ``counts[class]`` small distinct PNGs per class."""
    for label, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            (root / name / f"{i:02d}.png").write_bytes(png(1000 * label + i))
    return root


def params(tmp_path: Path, root: Path, **data) -> Path:
    data = {"source": "imagefolder", "root": str(root), "imbalance_ratio": 1, **data}
    return write_params(tmp_path / "params.yaml", data=data)


def shard(tmp_path: Path, root: Path, out_name: str = "shards", **data):
    out = tmp_path / "out" / out_name
    return invoke("shard", "--params", params(tmp_path, root, **data), "--out", out), out


def shard_in_own_process(tmp_path: Path, root: Path, **data):
    """The stage as its own process, bounded in time and memory: a hang or a runaway read fails the test."""
    out = tmp_path / "out" / "shards"
    done = run_stage(
        "shard",
        "--params",
        params(tmp_path, root, **data),
        "--out",
        out,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT)),
    )
    return done, out


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def records(out: Path, split: str) -> list[tuple[int, str, str]]:
    """(label, source, ext) of every record of a split, in shard order."""
    found = []
    for entry in manifest_of(out)["splits"][split]["shards"]:
        for _, label, _, ext, meta in iter_shard(out / entry["name"]):
            found.append((label, meta["source"], ext))
    return found


def skipped(out: Path, split: str = "train") -> dict[str, str]:
    return {item["source"]: item["error"] for item in manifest_of(out)["splits"][split]["skipped"]}


def all_records(out: Path) -> list[tuple[int, str, str]]:
    return [record for split in manifest_of(out)["splits"] for record in records(out, split)]


def test_links_back_to_the_root_and_into_another_class_are_listed_not_walked(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 4, "dog": 3})
    (root / "cat" / "loop").symlink_to(root.resolve())
    (root / "cat" / "dog").symlink_to(Path("..") / "dog")
    done, out = shard(tmp_path, root)
    assert done.code == 0, done.stderr
    found = all_records(out)
    assert Counter(label for label, _, _ in found) == {0: 4, 1: 3}
    assert sorted(source for _, source, _ in found) == [f"cat/{i:02d}.png" for i in range(4)] + [
        f"dog/{i:02d}.png" for i in range(3)
    ]
    assert all(label == 1 for label, source, _ in found if "dog" in source)
    assert skipped(out) == {
        "cat/dog": "a folder already read (dog); each folder is walked once",
        "cat/loop": "a folder already read (data.root); each folder is walked once",
    }
    assert "train: 5 samples in 1 shard(s), 2 classes present, 2 skipped" in done.stdout


def link_to_zero(path: Path) -> None:
    path.symlink_to("/dev/zero")


@pytest.mark.parametrize(
    "name, make, kind",
    [
        ("cat/x.jpg", os.mkfifo, "a FIFO"),  # opening it for reading would wait for a writer forever
        ("dog/z.jpg", link_to_zero, "a character device"),  # reading it would fill the memory
    ],
)
def test_a_file_that_is_not_regular_is_listed_and_never_read(name, make, kind, tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    make(root / name)
    done, out = shard_in_own_process(tmp_path, root)
    assert done.code == 0, done.stderr
    assert skipped(out) == {name: f"not a regular file ({kind})"}
    assert len(all_records(out)) == 6


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_link_leaving_the_root_is_refused_unless_allowed(what, tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    elsewhere = image_folder(tmp_path / "elsewhere", {"more": 2})
    link = root / "dog" / ("far.png" if what == "file" else "far")
    target = elsewhere / "more" / "00.png" if what == "file" else elsewhere / "more"
    link.symlink_to(target)
    done, out = shard(tmp_path, root)
    assert_one_line_error(
        done, f"{link}: links outside data.root ({target.resolve()}); set data.allow_outside_root: true to read it"
    )
    assert_nothing_left(tmp_path / "out")

    done, out = shard(tmp_path, root, allow_outside_root=True)
    assert done.code == 0, done.stderr
    far = ["dog/far.png"] if what == "file" else ["dog/far/00.png", "dog/far/01.png"]
    assert sorted(s for label, s, _ in all_records(out) if label == 1) == sorted(
        [f"dog/{i:02d}.png" for i in range(3)] + far
    )


def test_gif_is_sharded_as_png_and_other_files_are_listed(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    frames = [Image.new("RGB", (30, 20), color) for color in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(root / "cat" / "wave.gif", save_all=True, append_images=frames[1:])
    (root / "cat" / "README.txt").write_text("photos of my cat\n")
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    done, out = shard(tmp_path, root)
    assert done.code == 0, done.stderr
    gif = [(label, ext) for label, source, ext in all_records(out) if source == "cat/wave.gif"]
    assert gif == [(0, "png")]
    assert list(skipped(out)) == ["cat/README.txt"]
    assert skipped(out)["cat/README.txt"].startswith("not an image file (expected .jpg, ")
    assert "1 skipped" in done.stdout


def test_flat_folder_gets_a_stratified_seeded_test_split(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 10, "dog": 5})
    done, out = shard(tmp_path, root)
    assert done.code == 0, done.stderr
    manifest = manifest_of(out)
    assert list(manifest["splits"]) == ["train", "test"]
    assert manifest["splits"]["train"]["class_counts"] == [8, 4]
    assert manifest["splits"]["test"]["class_counts"] == [2, 1]
    assert manifest["holdout"] == {"split": "test", "from": "train", "fraction": 0.2, "seed": 0}
    assert list(manifest)[-1] == "holdout"
    train, test = ({s for _, s, _ in records(out, split)} for split in ("train", "test"))
    assert not train & test and len(train | test) == 15
    assert "test held out of train: 0.2 of each class (seed 0)" in done.stdout


def test_same_seed_same_split_other_seed_other_split(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 10, "dog": 5})
    first, out_a = shard(tmp_path, root, "a", seed=0)
    again, out_b = shard(tmp_path, root, "b", seed=0)
    other, out_c = shard(tmp_path, root, "c", seed=1)
    assert first.code == again.code == other.code == 0, first.stderr + other.stderr
    assert (out_a / "manifest.json").read_bytes() == (out_b / "manifest.json").read_bytes()
    assert records(out_a, "test") == records(out_b, "test")
    assert manifest_of(out_c)["splits"]["test"]["class_counts"] == [2, 1]
    assert {s for _, s, _ in records(out_c, "test")} != {s for _, s, _ in records(out_a, "test")}


def test_imbalance_ratio_makes_the_train_split_long_tailed(tmp_path):
    root = image_folder(tmp_path / "photos", {f"class{k}": 20 for k in range(10)})
    done, out = shard(tmp_path, root, imbalance_ratio=10)
    assert done.code == 0, done.stderr
    splits = manifest_of(out)["splits"]
    assert splits["test"]["class_counts"] == [4] * 10
    assert splits["train"]["class_counts"] == longtail_counts(160, 10, 10) == [16, 12, 9, 7, 5, 4, 3, 2, 2, 1]
    held_out = {s for _, s, _ in records(out, "test")}
    assert not held_out & {s for _, s, _ in records(out, "train")}


def test_imbalance_ratio_that_empties_a_class_is_refused(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    done, _ = shard(tmp_path, root, imbalance_ratio=100)
    assert_one_line_error(done, "data.imbalance_ratio 100 keeps no training image of class 'dog'", "1 keeps every")
    assert_nothing_left(tmp_path / "out")


def test_one_class_folder_is_refused(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 5})
    done, _ = shard(tmp_path, root)
    assert_one_line_error(done, f"data.root {root}: 1 class found (cat); LIFT+ needs at least 2")
    assert_nothing_left(tmp_path / "out")


def big_png(path: Path, size=(1000, 1000)) -> Path:
    """A million pixels in a few kilobytes (one colour): large to decode, small to store."""
    Image.new("RGB", size, (40, 90, 160)).save(path, format="PNG")
    return path


def test_image_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    big = big_png(root / "dog" / "huge.png")
    done, out = shard(tmp_path, root, max_pixels=500_000)
    assert_one_line_error(done, f"{big}: too large: 1000x1000 is 1.0 MP, over the 0.5 MP budget (data.max_pixels)")
    assert_nothing_left(tmp_path / "out")

    done, out = shard(tmp_path, root, max_pixels=500_000, on_decode_error="skip")
    assert done.code == 0, done.stderr
    listed = {**skipped(out, "train"), **skipped(out, "test")}
    assert listed == {"dog/huge.png": "too large: 1000x1000 is 1.0 MP, over the 0.5 MP budget (data.max_pixels)"}
    assert sorted(s for _, s, _ in all_records(out)) == [f"{c}/{i:02d}.png" for c in ("cat", "dog") for i in range(3)]


def test_skipped_garbage_gives_the_same_manifest_bytes_every_run(tmp_path):
    root = image_folder(tmp_path / "photos", {"cat": 3, "dog": 3})
    (root / "dog" / "garbage.png").write_bytes(b"not an image at all")
    first, out_a = shard(tmp_path, root, "a", on_decode_error="skip")
    again, out_b = shard(tmp_path, root, "b", on_decode_error="skip")
    assert first.code == again.code == 0, first.stderr
    manifest = (out_a / "manifest.json").read_bytes()
    assert manifest == (out_b / "manifest.json").read_bytes()
    listed = {**skipped(out_a, "train"), **skipped(out_a, "test")}
    assert listed == {"dog/garbage.png": "cannot decode: cannot identify image file"}
    assert b" at 0x" not in manifest
