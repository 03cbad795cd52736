from collections import Counter
from pathlib import Path

import pytest

from fake_raw_data import save_image
from liftplus.data.sources import open_source
from liftplus.data.sources.imagefolder import hold_out
from liftplus.data.sources.photos import PhotoEntry
from liftplus.errors import DataError


def test_flat_layout_holds_out_a_test_split_with_sorted_classes(tmp_path, data_params):
    for cls, count in (("zebra", 2), ("ant", 3), ("moth", 1)):
        for i in range(count):
            save_image(tmp_path / cls / f"{i}.png", (20, 20), fmt="PNG")
    save_image(tmp_path / "ant" / "sub" / "x.JPG", (20, 20), fmt="JPEG")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    source = open_source(data_params(source="imagefolder", root=str(tmp_path), imbalance_ratio=1))
    assert source.classnames == ["ant", "moth", "zebra"]
    assert list(source.splits) == ["train", "test"]
    assert source.holdout == {"split": "test", "from": "train", "fraction": 0.2, "seed": 0}
    train, test = list(source.splits["train"]()), list(source.splits["test"]())
    # ant: 4 files, one held out; moth: its only file stays in train; zebra: 2 files, one held out
    assert [(r.label, r.source) for r in train] == [
        (0, "ant/0.png"), (0, "ant/1.png"), (0, "ant/sub/x.JPG"), (1, "moth/0.png"), (2, "zebra/0.png"),
    ]
    assert [(r.label, r.source) for r in test] == [(0, "ant/2.png"), (2, "zebra/1.png")]
    assert train[2].ext == "jpg"
    assert [s.source for s in source.skipped["train"]] == ["ant/notes.txt"]
    assert source.skipped["test"] == []


def test_split_layout_uses_train_classes(tmp_path, data_params):
    for split in ("train", "test"):
        for cls in ("b", "a"):
            save_image(tmp_path / split / cls / "0.jpg", (20, 20), fmt="JPEG")
    save_image(tmp_path / "val" / "b" / "0.jpg", (20, 20), fmt="JPEG")
    source = open_source(data_params(source="imagefolder", root=str(tmp_path), imbalance_ratio=1))
    assert source.classnames == ["a", "b"]
    assert list(source.splits) == ["train", "val", "test"]
    assert source.holdout is None
    assert [r.label for r in source.splits["val"]()] == [1]
    assert [r.source for r in source.splits["test"]()] == ["test/a/0.jpg", "test/b/0.jpg"]


def test_unknown_class_in_test_and_empty_class(tmp_path, data_params):
    save_image(tmp_path / "train" / "a" / "0.jpg", (20, 20), fmt="JPEG")
    save_image(tmp_path / "test" / "c" / "0.jpg", (20, 20), fmt="JPEG")
    with pytest.raises(DataError, match=r"test/c: class folder not in"):
        open_source(data_params(source="imagefolder", root=str(tmp_path)))
    (tmp_path / "train" / "empty").mkdir()
    (tmp_path / "test" / "c" / "0.jpg").unlink()
    (tmp_path / "test" / "c").rmdir()
    with pytest.raises(DataError, match=r"train/empty: no image files"):
        open_source(data_params(source="imagefolder", root=str(tmp_path)))


def test_missing_root(tmp_path, data_params):
    with pytest.raises(DataError, match=r"data\.root .*absent: folder not found"):
        open_source(data_params(source="imagefolder", root=str(tmp_path / "absent")))


def photo_entries(counts: list[int]) -> list[PhotoEntry]:
    return [PhotoEntry(Path(f"{label}/{i}.png"), f"{label}/{i}.png", label)
            for label, count in enumerate(counts) for i in range(count)]


def test_hold_out_is_stratified_seeded_and_keeps_one_per_class():
    entries = photo_entries([10, 5, 1, 2, 7])
    kept, held = hold_out(entries, 5, 0.2, seed=0)
    assert Counter(e.label for e in held) == {0: 2, 1: 1, 3: 1, 4: 1}  # round(1.4) = 1; a lone image stays
    assert sorted(kept + held, key=entries.index) == entries
    assert kept == sorted(kept, key=entries.index) and held == sorted(held, key=entries.index)
    assert hold_out(entries, 5, 0.2, seed=0) == (kept, held)
    assert hold_out(entries, 5, 0.2, seed=1)[1] != held
    kept, held = hold_out(photo_entries([2, 3]), 2, 0.9, seed=0)
    assert Counter(e.label for e in kept) == {0: 1, 1: 1}  # at least one of each class is kept


def test_val_without_test_holds_the_test_split_out_of_train(tmp_path, data_params):
    for i in range(5):
        for cls in ("a", "b"):
            save_image(tmp_path / "train" / cls / f"{i}.png", (20, 20), fmt="PNG")
    save_image(tmp_path / "val" / "a" / "0.png", (20, 20), fmt="PNG")
    source = open_source(data_params(source="imagefolder", root=str(tmp_path), imbalance_ratio=1, seed=3))
    assert list(source.splits) == ["train", "val", "test"]
    assert source.holdout == {"split": "test", "from": "train", "fraction": 0.2, "seed": 3}
    assert [r.label for r in source.splits["test"]()] == [0, 1]
    assert len(list(source.splits["train"]())) == 8
    assert [r.source for r in source.splits["val"]()] == ["val/a/0.png"]


def test_imbalance_ratio_subsamples_train_in_file_order(tmp_path, data_params):
    for cls in ("a", "b", "c"):
        for i in range(10):
            save_image(tmp_path / cls / f"{i}.png", (8, 8), fmt="PNG")
    source = open_source(data_params(source="imagefolder", root=str(tmp_path), imbalance_ratio=4))
    train = [r.source for r in source.splits["train"]()]
    assert Counter(s.split("/")[0] for s in train) == {"a": 8, "b": 4, "c": 2}  # 8 * (1/4) ** (i / 2)
    assert train == sorted(train)
    assert [r.label for r in source.splits["test"]()] == [0, 0, 1, 1, 2, 2]


def test_one_class_and_a_class_linked_to_another_are_refused(tmp_path, data_params):
    save_image(tmp_path / "cat" / "0.png", (8, 8), fmt="PNG")
    save_image(tmp_path / "cat" / "1.png", (8, 8), fmt="PNG")
    with pytest.raises(DataError, match=r"1 class found \(cat\); LIFT\+ needs at least 2$"):
        open_source(data_params(source="imagefolder", root=str(tmp_path)))
    (tmp_path / "kitty").symlink_to("cat")
    with pytest.raises(DataError, match=r"kitty: the same folder as .*/cat \(each needs a folder of its own\)"):
        open_source(data_params(source="imagefolder", root=str(tmp_path)))
