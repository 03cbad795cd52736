"""Long-tail statistics of a split's class counts (the many/medium/few rule lives here)."""

from __future__ import annotations

from typing import Sequence

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
