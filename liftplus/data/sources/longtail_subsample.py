"""The CIFAR-LT rule that makes a balanced training set long-tailed.

Number for number what the reference ``datasets/cifar100.py`` does: class i
keeps ``int(img_max * (1/IR) ** (i / (K - 1)))`` images, chosen by seeding
numpy's *global* RNG and shuffling each class's indices in label order.
"""

from __future__ import annotations

import numpy as np


def longtail_counts(num_samples: int, num_classes: int, imbalance_ratio: float) -> list[int]:
    """Images kept per class, with ``img_max = num_samples / num_classes`` as the reference."""
    img_max = num_samples / num_classes
    if num_classes == 1:
        return [int(img_max)]
    imb_factor = 1.0 / imbalance_ratio
    return [int(img_max * (imb_factor ** (i / (num_classes - 1.0)))) for i in range(num_classes)]


def longtail_indices(
    labels: np.ndarray, num_classes: int, imbalance_ratio: float, seed: int
) -> np.ndarray:
    """Indices into ``labels`` of the kept samples, class by class as the reference orders them.

    An imbalance ratio of 1 keeps every sample in its original order (the
    reference does not subsample, nor touch the RNG, then).
    """
    labels = np.asarray(labels, dtype=np.int64)
    if imbalance_ratio == 1:
        return np.arange(len(labels))
    counts = longtail_counts(len(labels), num_classes, imbalance_ratio)
    np.random.seed(seed)
    kept = []
    for the_class, the_count in zip(np.unique(labels), counts):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        kept.append(idx[:the_count])
    return np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)
