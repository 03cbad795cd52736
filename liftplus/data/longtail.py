"""Long-tail statistics of a split's class counts (the many/medium/few rule lives here)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from liftplus.errors import DataError

MANY_ABOVE = 100
"""A class with more than this many training images is a *many* class."""
FEW_BELOW = 20
"""A class with fewer than this many training images is a *few* class; the rest are *medium*."""

GROUPS = ("many", "medium", "few")


def group_of(train_count: int) -> str:
    if train_count > MANY_ABOVE:
        return "many"
    if train_count < FEW_BELOW:
        return "few"
    return "medium"


def class_groups(train_counts: Sequence[int]) -> dict[str, list[int]]:
    """Class indices of each group, from the training class counts."""
    groups: dict[str, list[int]] = {g: [] for g in GROUPS}
    for label, count in enumerate(train_counts):
        groups[group_of(int(count))].append(label)
    return groups


def longtail_stats(class_counts: Sequence[int]) -> dict[str, Any]:
    """Long-tail statistics of one split's per-class image counts (indexed by label).

    A class with no image leaves the imbalance ratio undefined: it is reported as
    ``None`` (JSON null) and the class is listed in ``empty_classes``; every other
    figure is still computed. Shares are ``None`` for a split with no image at all.
    """
    counts = [int(c) for c in class_counts]
    if not counts:
        raise DataError("class counts are empty: no class to compute statistics for")
    negative = [label for label, count in enumerate(counts) if count < 0]
    if negative:
        raise DataError(f"class counts must be >= 0, label {negative[0]} has {counts[negative[0]]}")
    num_samples = sum(counts)
    largest, smallest = max(counts), min(counts)
    groups = class_groups(counts)

    def share(group: str) -> float | None:
        if num_samples == 0:
            return None
        return sum(counts[label] for label in groups[group]) / num_samples

    return {
        "num_classes": len(counts),
        "num_samples": num_samples,
        "max": largest,
        "min": smallest,
        "imbalance_ratio": largest / smallest if smallest > 0 else None,
        "many": len(groups["many"]),
        "medium": len(groups["medium"]),
        "few": len(groups["few"]),
        "head_share": share("many"),
        "tail_share": share("few"),
        "empty_classes": [label for label, count in enumerate(counts) if count == 0],
    }


DATASET_SECTION = "dataset"
"""longtail.json's metrics sit under this key (`dvc exp show`: ``dataset.classes_few``); not ``data``,
whose params (``data.imbalance_ratio``) would share the column names."""
METRIC_NAMES = {
    "num_classes": "classes", "num_samples": "images", "max": "max_per_class", "min": "min_per_class",
    "imbalance_ratio": "imbalance_ratio", "many": "classes_many", "medium": "classes_medium",
    "few": "classes_few", "head_share": "head_share", "tail_share": "tail_share",
}
"""Statistic (:func:`longtail_stats`) → the name the validate stage reports it by."""
DIGITS = 4


def _rounded(value: Any) -> Any:
    return round(value, DIGITS) if isinstance(value, float) else value


def longtail_metrics(counts_by_split: Mapping[str, Sequence[int]], train_split: str = "train") -> dict:
    """Metrics of a dataset: the training split's statistics, plus each split's size."""
    stats = longtail_stats(counts_by_split[train_split])
    section: dict[str, Any] = {name: _rounded(stats[key]) for key, name in METRIC_NAMES.items()}
    for split, counts in counts_by_split.items():
        if split != train_split:
            section[f"images_{split}"] = sum(int(c) for c in counts)
    return {DATASET_SECTION: section}


def count_curve(class_counts: Sequence[int], classnames: Sequence[str]) -> list[dict[str, Any]]:
    """The class-count curve: one row per class, most images first (ties by label)."""
    order = sorted(range(len(class_counts)), key=lambda label: (-int(class_counts[label]), label))
    return [
        {"rank": rank, "label": label, "class": classnames[label], "count": int(class_counts[label])}
        for rank, label in enumerate(order, start=1)
    ]
