import pytest

from liftplus.data.longtail import (
    count_curve,
    longtail_metrics,
    longtail_stats,
)
from liftplus.data.sources.split_list import counts_from_split_list
from liftplus.errors import DataError


def test_stats_of_a_long_tail():
    stats = longtail_stats([500, 120, 100, 50, 20, 19, 5])
    assert stats["num_classes"] == 7
    assert stats["num_samples"] == 814
    assert (stats["max"], stats["min"]) == (500, 5)
    assert stats["imbalance_ratio"] == pytest.approx(100.0)
    # many: > 100 (500, 120); medium: 20..100 inclusive (100, 50, 20); few: < 20 (19, 5)
    assert (stats["many"], stats["medium"], stats["few"]) == (2, 3, 2)
    assert stats["head_share"] == pytest.approx(620 / 814)
    assert stats["tail_share"] == pytest.approx(24 / 814)
    assert stats["empty_classes"] == []


def test_a_class_without_images_is_flagged_and_leaves_the_ratio_undefined():
    stats = longtail_stats([150, 0, 30, 0])
    assert stats["imbalance_ratio"] is None
    assert stats["empty_classes"] == [1, 3]
    assert (stats["min"], stats["max"], stats["num_samples"]) == (0, 150, 180)
    assert (stats["many"], stats["medium"], stats["few"]) == (1, 1, 2)
    assert stats["tail_share"] == 0.0


def test_no_images_at_all_gives_null_shares():
    stats = longtail_stats([0, 0])
    assert stats["head_share"] is None and stats["tail_share"] is None


@pytest.mark.parametrize("counts, message", [([], "empty"), ([3, -1], "label 1")])
def test_bad_counts_are_data_errors(counts, message):
    with pytest.raises(DataError, match=message):
        longtail_stats(counts)


def test_metrics_take_train_stats_and_every_split_size():
    metrics = longtail_metrics({"train": [300, 40, 4], "test": [10, 10, 10]})
    assert metrics == {"dataset": {
        "classes": 3, "images": 344, "max_per_class": 300, "min_per_class": 4, "imbalance_ratio": 75.0,
        "classes_many": 1, "classes_medium": 1, "classes_few": 1,
        "head_share": 0.8721, "tail_share": 0.0116,  # 300 / 344 and 4 / 344, rounded to 4 digits
        "images_test": 30,
    }}


def test_count_curve_is_sorted_by_count_then_label():
    curve = count_curve([5, 40, 5, 7], ["a", "b", "c", "d"])
    assert [(r["rank"], r["label"], r["class"], r["count"]) for r in curve] == [
        (1, 1, "b", 40), (2, 3, "d", 7), (3, 0, "a", 5), (4, 2, "c", 5),
    ]


def test_counts_from_split_list(tmp_path):
    listing = tmp_path / "train.txt"
    listing.write_text(
        "train/n01/a.jpg 0\ntrain/n01/b.jpg 0\n\ntrain/my dir/c d.jpg 3\ntrain/n02/e.jpg 1\n"
        "train/n01/f.jpg 0\n"
    )
    assert counts_from_split_list(listing) == [3, 1, 0, 1]


@pytest.mark.parametrize("text, where", [
    ("a.jpg 0\nb.jpg x\n", ":2:"),
    ("a.jpg 0\nb.jpg -1\n", ":2:"),
    ("justapath.jpg\n", ":1:"),
    ("\n\n", "no 'relative/path label' line"),
])
def test_bad_split_list_names_the_line(tmp_path, text, where):
    listing = tmp_path / "list.txt"
    listing.write_text(text)
    with pytest.raises(DataError, match=where) as caught:
        counts_from_split_list(listing)
    assert str(listing) in str(caught.value)


def test_missing_split_list(tmp_path):
    with pytest.raises(DataError, match="split list not found"):
        counts_from_split_list(tmp_path / "nope.txt")
