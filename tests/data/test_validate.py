"""The validate stage: every failure mode stops it with the expectation (or file) named and
nothing written; a clean dataset gets its long-tail metrics and class-count curve.

Shards are written here with webdataset's TarWriter in the shard format
(``{key}.png|jpg``, ``{key}.cls``, ``{key}.json`` + manifest.json), tiny on purpose.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from webdataset import TarWriter

from liftplus import offline
from liftplus.data.expectations import build_checks, read_shard_facts, run_checks, sample_positions
from liftplus.io import sha256_file
from stages.validate import main as validate_main

REPO = Path(__file__).resolve().parents[2]
CLASSNAMES = ["ant", "bee", "cat", "dog", "eel", "fox"]
TRAIN_COUNTS = [120, 40, 25, 10, 4, 2]  # many 1, medium 2, few 3; 201 images, IR 60
TEST_COUNTS = [5] * 6


def png(mode: str = "L", size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=0).save(buffer, format="PNG")
    return buffer.getvalue()


GRAY_PNG = png()


def write_dataset(
    root: Path,
    splits: dict[str, list[int]] | None = None,
    classnames=CLASSNAMES,
    source="fashion-mnist",
    shard_size=80,
    tamper: dict | None = None,
) -> Path:
    """Shards + manifest in ``root/shards``, records in label order (as the long-tail rule keeps them).

    ``splits`` maps split name to class counts (default train TRAIN_COUNTS, test TEST_COUNTS).
    ``tamper`` maps (split, position) to fields that replace the record's: label (both
    .cls and .json), image, ext. The manifest describes the untampered dataset.
    """
    shard_dir = root / "shards"
    shard_dir.mkdir(parents=True)
    entries = {}
    for split, counts in (splits or {"train": TRAIN_COUNTS, "test": TEST_COUNTS}).items():
        labels = [label for label, n in enumerate(counts) for _ in range(n)]
        shards = []
        for first in range(0, len(labels), shard_size):
            name = f"{split}-{len(shards):06d}.tar"
            with open(shard_dir / name, "wb") as f, TarWriter(f, encoder=False, mtime=0) as writer:
                for position in range(first, min(first + shard_size, len(labels))):
                    record = {"label": labels[position], "image": GRAY_PNG, "ext": "png"}
                    record.update((tamper or {}).get((split, position), {}))
                    meta = {"source": f"raw#{position}", "label": record["label"]}
                    writer.write({
                        "__key__": f"{split}_{position:06d}",
                        record["ext"]: record["image"],
                        "cls": str(record["label"]).encode(),
                        "json": json.dumps(meta).encode(),
                    })
            shards.append({"name": name, "sha256": sha256_file(shard_dir / name),
                           "num_samples": min(shard_size, len(labels) - first),
                           "bytes": (shard_dir / name).stat().st_size})
        entries[split] = {"num_samples": len(labels), "class_counts": list(counts), "shards": shards,
                          "skipped": []}
    manifest = {"format": "liftplus-shards/1", "source": source, "classnames": list(classnames),
                "num_classes": len(classnames), "splits": entries}
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    return shard_dir


def edit_manifest(shard_dir: Path, edit) -> None:
    path = shard_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def write_params(root: Path, sample_size=64, verify_checksums=True) -> Path:
    path = root / "params.yaml"
    path.write_text(f"validate:\n  sample_size: {sample_size}\n  verify_checksums: {str(verify_checksums).lower()}\n")
    return path


def run_stage(root: Path, shard_dir: Path, capsys, **params) -> tuple[int, list[str]]:
    """``stages.validate.main`` in-process; (exit status, stderr lines)."""
    argv = ["--params", str(write_params(root, **params)), "--shards", str(shard_dir),
            "--out", str(root / "stats")]
    try:
        validate_main(argv)
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    return status, capsys.readouterr().err.splitlines()


# --- the stage as DVC runs it ---------------------------------------------------------------


def stage_process(root: Path, shard_dir: Path) -> subprocess.CompletedProcess:
    env = offline.environment()
    return subprocess.run(
        [sys.executable, "-m", "stages.validate", "--params", str(write_params(root)),
         "--shards", str(shard_dir), "--out", str(root / "stats")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )


@pytest.mark.slow
def test_stage_writes_longtail_metrics_and_the_count_curve(tmp_path):
    # imagefolder: class order is arbitrary, so counts need not fall with the label
    train_counts = [40, 120, 25, 10, 4, 2]
    shard_dir = write_dataset(tmp_path, {"train": train_counts, "test": TEST_COUNTS}, source="imagefolder")
    done = stage_process(tmp_path, shard_dir)
    assert done.returncode == 0, done.stderr
    assert "Calculating Metrics" not in done.stderr + done.stdout
    assert done.stdout.startswith("validate: ") and "expectations passed" in done.stdout
    metrics = json.loads((tmp_path / "stats" / "longtail.json").read_text())
    assert metrics == {"dataset": {
        "classes": 6, "images": 201, "max_per_class": 120, "min_per_class": 2,
        "imbalance_ratio": 60.0, "classes_many": 1, "classes_medium": 2, "classes_few": 3,
        "head_share": round(120 / 201, 4), "tail_share": round(16 / 201, 4), "images_test": 30,
    }}
    with open(tmp_path / "stats" / "class_counts.csv", newline="") as f:
        rows = [(r["rank"], r["label"], r["class"], r["count"]) for r in csv.DictReader(f)]
    assert rows == [("1", "1", "bee", "120"), ("2", "0", "ant", "40"), ("3", "2", "cat", "25"),
                    ("4", "3", "dog", "10"), ("5", "4", "eel", "4"), ("6", "5", "fox", "2")]


def test_stage_without_a_manifest_names_it(tmp_path):
    (tmp_path / "shards").mkdir()
    done = stage_process(tmp_path, tmp_path / "shards")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'shards' / 'manifest.json'}: manifest not found (run the shard stage first)"]
    assert not (tmp_path / "stats").exists()


# --- in-process: every failure mode at once, each reported by its own expectation ------------


def test_every_broken_expectation_is_reported_and_nothing_is_written(tmp_path, capsys):
    shard_dir = write_dataset(
        tmp_path,
        {"train": [120, 40, 25, 10, 0, 4], "test": [5] * 6, "val": [20] * 6},
        classnames=["ant", "bee", "ant", "dog", "eel", "fox"],
        tamper={
            ("train", 0): {"label": 12},
            ("test", 0): {"image": b"this is not a png"},
            ("test", 1): {"image": png("RGBA")},
            ("test", 2): {"ext": "jpg"},
            ("test", 3): {"image": png(size=(300, 280))},
        },
    )
    val_shards = [shard_dir / "val-000000.tar", shard_dir / "val-000001.tar"]
    val_shards[0].write_bytes(b"\x07" * val_shards[0].stat().st_size)
    val_shards[1].write_bytes(val_shards[1].read_bytes()[:5000])

    def break_manifest(manifest):
        manifest["splits"]["test"]["shards"][0]["sha256"] = "ab" * 32
        train_shards = manifest["splits"]["train"]["shards"]
        train_shards[0]["num_samples"] += 1
        train_shards[1]["num_samples"] -= 1

    edit_manifest(shard_dir, break_manifest)
    status, err = run_stage(tmp_path, shard_dir, capsys)

    assert status == 1
    fm_rule = "(fashion-mnist: the long-tail rule keeps fewer images for higher labels)"
    test_shard = shard_dir / "test-000000.tar"
    expected = [
        "expect_column_values_to_be_unique(classname): 2 of 6 class names are duplicated, "
        "e.g. 'ant' (label 0); 'ant' (label 2)",
        "expect_column_values_to_be_between(count, 1): 1 of 6 train classes have no image, e.g. label 4 (eel)",
        f"expect_column_values_to_be_decreasing(count by label): 1 of 6 train classes {fm_rule} "
        "have more images than the class before, e.g. label 5: 4 images",
        "expect_column_values_to_be_in_set(readable, [True]): 2 of 6 shards cannot be read, "
        f"e.g. {val_shards[0]}: corrupt or truncated shard",
        "expect_column_pair_values_to_be_equal(records, manifest num_samples): 2 of 6 shards hold a "
        "different number of records, e.g. train-000000.tar: 80 records, manifest says 81; "
        "train-000001.tar: 80 records, manifest says 79",
        "expect_column_pair_values_to_be_equal(images per label in shards, class_counts): 2 of 13 "
        "(split, label) pairs count differently in the shards and the manifest, "
        "e.g. train label 0: 119 in shards, 120 in manifest; train label 12: 1 in shards, 0 in manifest",
        "expect_column_values_to_be_in_set(sha256 match, [True]): 2 of 3 splits have shards whose sha256 "
        f"differs from the manifest, e.g. test: {test_shard}: sha256",
        "expect_column_values_to_be_between(label, 0, 5): 1 of 64 sampled train records out of range, "
        "e.g. 12 (train-000000.tar #0 key train_000000)",
        "expect_column_values_to_be_in_set(decoded, [True]): 1 of 30 sampled test records do not decode, "
        "e.g. test-000000.tar #0 key test_000000: UnidentifiedImageError: cannot identify image file",
        "expect_column_values_to_be_in_set(mode, ['L', 'RGB']): 1 of 30 sampled test images have another "
        "mode, e.g. RGBA (test-000000.tar #1 key test_000001)",
        "expect_column_pair_values_to_be_equal(format, extension): 1 of 30 sampled test images are not in "
        "their extension's format, e.g. PNG stored as .jpg (test-000000.tar #2 key test_000002)",
        "expect_column_values_to_be_between(min(width, height), None, 256): 1 of 30 sampled test images "
        "have a short side above data.max_short_side 256, e.g. 300x280 (test-000000.tar #3 key test_000003)",
    ]
    failures = [line.removeprefix("  - ") for line in err if line.startswith("  - ")]
    assert len(failures) == len(expected), "\n".join(failures)
    for line, start in zip(failures, expected):
        assert line.startswith(start), f"\n{line}\ndoes not start with\n{start}"
    assert "val: " in failures[6]  # the garbage val shard fails its checksum too
    assert failures[8].endswith("cannot identify image file")  # not PIL's repr of a buffer
    assert err[0].startswith("validate: 12 of ") and err[0].endswith(f"expectations failed on {shard_dir}")
    assert err[-1].startswith(f"error: validate: 12 expectation(s) failed on {shard_dir}, first: ")
    assert not (tmp_path / "stats").exists()


def test_checksums_are_only_verified_when_asked(tmp_path, capsys):
    shard_dir = write_dataset(tmp_path)
    edit_manifest(shard_dir, lambda m: m["splits"]["test"]["shards"][0].update(sha256="ab" * 32))
    status, err = run_stage(tmp_path, shard_dir, capsys, verify_checksums=False)
    assert status == 0, err
    assert json.loads((tmp_path / "stats" / "longtail.json").read_text())["dataset"]["classes_few"] == 3


def test_class_name_count_unlike_the_label_count_is_refused(tmp_path, capsys):
    shard_dir = write_dataset(tmp_path)
    edit_manifest(shard_dir, lambda m: m["classnames"].pop())
    status, err = run_stage(tmp_path, shard_dir, capsys)
    assert status == 1
    assert err == [f"error: {shard_dir / 'manifest.json'}: 'num_classes' is 6 but there are 5 classnames"]
    assert not (tmp_path / "stats").exists()


def test_the_suite_itself_checks_the_manifest_counts(tmp_path):
    """read_manifest refuses these first; the suite still holds them on a manifest given directly."""
    shard_dir = write_dataset(tmp_path)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    manifest["classnames"].pop()
    manifest["splits"]["test"]["class_counts"].append(0)
    manifest["splits"]["train"]["num_samples"] += 1
    facts = read_shard_facts(manifest, shard_dir, sample_size=8)
    failures, total = run_checks(build_checks(manifest, facts, checksum_problems=None))
    assert [str(f) for f in failures] == [
        "expect_column_pair_values_to_be_equal(len(classnames), num_classes): 2 of 2 splits have a "
        "class-name count unlike num_classes, e.g. 5 class names, num_classes 6; "
        "5 class names, num_classes 6",
        "expect_column_pair_values_to_be_equal(len(class_counts), num_classes): 1 of 2 splits have a "
        "class_counts length unlike num_classes, e.g. test: 7 class counts, num_classes 6",
        "expect_column_pair_values_to_be_equal(num_samples, sum(class_counts)): 1 of 2 splits have "
        "num_samples unlike the sum of class_counts, e.g. train: num_samples 202, sum 201",
        "expect_column_pair_values_to_be_equal(num_samples, sum(shards.num_samples)): 1 of 2 splits "
        "have num_samples unlike the sum over their shards, e.g. train: num_samples 202, shards 201",
    ]
    assert total > len(failures)


def test_sample_positions_are_spread_and_deterministic():
    assert sample_positions(10, 4) == [0, 2, 5, 7]
    assert sample_positions(3, 256) == [0, 1, 2]
    assert sample_positions(0, 8) == []
