"""Records from decoded image arrays (Fashion-MNIST, CIFAR): long-tailed train split, PNG bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from liftplus.data.images import encode_png
from liftplus.data.sources import Record, record_key
from liftplus.data.sources.longtail_subsample import longtail_indices
from liftplus.errors import DataError
from liftplus.params import DataParams


def array_split(
    split: str, images: np.ndarray, labels: np.ndarray, num_classes: int, data: DataParams, path: Path
) -> Callable[[], Iterator[Record]]:
    """The split's records, lazily; ``train`` keeps the CIFAR-LT share of each class.

    ``path`` is the file the arrays came from: it names the records' source
    and the error when a class has no training image to subsample from.
    """
    if split == "train":
        missing = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
        if missing:
            raise DataError(f"{path}: no training image of class(es) {missing[:5]}")
        kept = longtail_indices(labels, num_classes, data.imbalance_ratio, data.seed)
    else:
        kept = np.arange(len(labels))

    def iterate() -> Iterator[Record]:
        for position, index in enumerate(kept):
            yield Record(
                key=record_key(split, position),
                label=int(labels[index]),
                image=encode_png(images[index]),
                ext="png",
                source=f"{path.name}#{int(index)}",
            )

    iterate.num_records = len(kept)  # type: ignore[attr-defined]  # the shard progress line's total
    return iterate
