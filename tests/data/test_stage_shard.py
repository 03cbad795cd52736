import numpy as np
import pytest
import yaml

from fake_raw_data import make_fashion_mnist, save_image
from liftplus.data.manifest import read_manifest, verify_checksums
from liftplus.data.shard_reader import iter_shard
from stages.shard import main

def write_params(tmp_path, **data):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}))
    return path


def fashion_params(tmp_path, **extra):
    make_fashion_mnist(tmp_path / "raw", per_class=20, test_per_class=2)
    return write_params(tmp_path, root=str(tmp_path / "raw"), imbalance_ratio=10,
                        shard_max_samples=50, **extra)


def run_stage(params, out):
    main(["--params", str(params), "--out", str(out)])


def test_writes_shards_and_manifest(tmp_path, capsys):
    out = tmp_path / "data" / "shards"
    run_stage(fashion_params(tmp_path), out)
    manifest = read_manifest(out / "manifest.json")
    verify_checksums(manifest, out)
    train = manifest["splits"]["train"]
    expected_counts = [int(20 * 0.1 ** (i / 9)) for i in range(10)]
    assert train["class_counts"] == expected_counts
    assert manifest["splits"]["test"]["class_counts"] == [2] * 10
    assert [s["num_samples"] for s in train["shards"]] == [50, sum(expected_counts) - 50]
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "test-000000.tar", "train-000000.tar", "train-000001.tar"]
    labels = [label for name in ("train-000000.tar", "train-000001.tar")
              for _, label, *_ in iter_shard(out / name)]
    assert np.bincount(labels).tolist() == train["class_counts"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["shards"]
    printed = capsys.readouterr().out
    assert f"train: {sum(expected_counts)} samples in 2 shard(s)" in printed


def test_rerun_is_byte_identical_and_replaces_the_folder(tmp_path):
    params = fashion_params(tmp_path)
    out = tmp_path / "shards"
    run_stage(params, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "stale.tar").write_bytes(b"left over")
    run_stage(params, out)
    after = {p.name: p.read_bytes() for p in out.iterdir()}
    assert after == before


def assert_failed_cleanly(capsys, exc_info, out, needle):
    assert exc_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and needle in err
    assert not any(p.name.startswith(".shards.") for p in out.parent.iterdir())


def test_missing_root_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "shards"
    params = write_params(tmp_path, root=str(tmp_path / "missing"))
    with pytest.raises(SystemExit) as exc_info:
        run_stage(params, out)
    assert_failed_cleanly(capsys, exc_info, out, "data.root")
    assert [p.name for p in tmp_path.iterdir()] == ["params.yaml"]


def test_failure_while_writing_keeps_previous_shards_and_no_temp(tmp_path, capsys):
    root = tmp_path / "photos"
    for cls in ("a", "b"):
        for i in range(3):
            save_image(root / "train" / cls / f"{i}.jpg", (20, 20), fmt="JPEG")
        save_image(root / "test" / cls / "0.jpg", (20, 20), fmt="JPEG")
    out = tmp_path / "shards"
    good = write_params(tmp_path, source="imagefolder", root=str(root), imbalance_ratio=1)
    run_stage(good, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (root / "train" / "b" / "2.jpg").write_bytes(b"broken")
    with pytest.raises(SystemExit) as exc_info:
        run_stage(good, out)
    assert_failed_cleanly(capsys, exc_info, out, "b/2.jpg: cannot decode")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml", "photos", "shards"]

    write_params(tmp_path, source="imagefolder", root=str(root), imbalance_ratio=1, on_decode_error="skip")
    run_stage(good, out)
    manifest = read_manifest(out)
    assert manifest["splits"]["train"]["class_counts"] == [3, 2]
    assert manifest["splits"]["train"]["skipped"][0]["source"] == "train/b/2.jpg"


def test_wrong_source_name(tmp_path, capsys):
    out = tmp_path / "shards"
    with pytest.raises(SystemExit) as exc_info:
        run_stage(write_params(tmp_path, source="mnist"), out)
    assert_failed_cleanly(capsys, exc_info, out, "'data.source' is 'mnist'")
    assert not out.exists()



def test_pixel_store_holds_the_decoded_images_the_loader_reads_identically(tmp_path):
    """``data.store: pixels`` keeps each image as its uint8 array: the loader then yields the very
    tensors it yields from the (lossless PNG) encoded shards, and validate's decode check passes."""
    import torch

    from liftplus.data.expectations import decode_facts
    from liftplus.data.loader import ShardIndex
    from liftplus.data.transforms import train_transform

    make_fashion_mnist(tmp_path / "raw", per_class=20, test_per_class=2)
    common = dict(root=str(tmp_path / "raw"), imbalance_ratio=10, shard_max_samples=50)
    run_stage(write_params(tmp_path, **common), tmp_path / "encoded")
    (tmp_path / "p").mkdir()
    run_stage(write_params(tmp_path / "p", store="pixels", **common), tmp_path / "pixels")

    encoded = list(iter_shard(tmp_path / "encoded/train-000000.tar"))
    pixels = list(iter_shard(tmp_path / "pixels/train-000000.tar"))
    assert [(k, label) for k, label, *_ in pixels] == [(k, label) for k, label, *_ in encoded]
    assert {ext for *_, ext, _ in pixels} == {"npy"}
    key, label, data, ext, _ = pixels[0]
    assert len(data) == 28 * 28 + 128  # header + one byte a pixel (grayscale)
    facts = decode_facts(data, ext)
    assert (facts["decoded"], facts["width"], facts["height"], facts["format"]) == (True, 28, 28, "NPY")
    assert decode_facts(b"\x93NUMPY garbage", "npy")["error"]

    transform = train_transform(16, (0.5,) * 3, (0.25,) * 3, epochs=2)
    shards = {name: sorted((tmp_path / name).glob("train-*.tar")) for name in ("encoded", "pixels")}
    datasets = {name: ShardIndex(paths, transform, seed=3) for name, paths in shards.items()}
    for i in range(0, len(datasets["encoded"]), 7):
        a, la = datasets["encoded"][(1, i)]
        b, lb = datasets["pixels"][(1, i)]
        assert la == lb and torch.equal(a, b)
