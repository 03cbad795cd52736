import pytest

from fake_raw_data import save_image
from liftplus.data.sources import open_source
from liftplus.errors import DataError


def test_flat_layout_is_train_only_with_sorted_classes(tmp_path, data_params):
    for cls, count in (("zebra", 2), ("ant", 3), ("moth", 1)):
        for i in range(count):
            save_image(tmp_path / cls / f"{i}.png", (20, 20), fmt="PNG")
    save_image(tmp_path / "ant" / "sub" / "x.JPG", (20, 20), fmt="JPEG")
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    source = open_source(data_params(source="imagefolder", root=str(tmp_path)))
    assert source.classnames == ["ant", "moth", "zebra"]
    assert list(source.splits) == ["train"]
    records = list(source.splits["train"]())
    assert [(r.label, r.source) for r in records] == [
        (0, "ant/0.png"), (0, "ant/1.png"), (0, "ant/2.png"), (0, "ant/sub/x.JPG"),
        (1, "moth/0.png"), (2, "zebra/0.png"), (2, "zebra/1.png"),
    ]
    assert records[3].ext == "jpg"


def test_split_layout_uses_train_classes(tmp_path, data_params):
    for split in ("train", "test"):
        for cls in ("b", "a"):
            save_image(tmp_path / split / cls / "0.jpg", (20, 20), fmt="JPEG")
    save_image(tmp_path / "val" / "b" / "0.jpg", (20, 20), fmt="JPEG")
    source = open_source(data_params(source="imagefolder", root=str(tmp_path)))
    assert source.classnames == ["a", "b"]
    assert set(source.splits) == {"train", "val", "test"}
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
