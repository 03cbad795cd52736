"""Accuracy of a classifier on a long-tailed problem: overall, per class, many/medium/few.

Every result is plain JSON (floats, ints, None): a class absent from the test set has
accuracy None and is left out of every mean; a group with no such class reports None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix

from liftplus.data.longtail import GROUPS, class_groups
from liftplus.errors import DataError


def _labels(values: Sequence[int], name: str, num_classes: int) -> np.ndarray:
    array = np.asarray(values).reshape(-1)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{name} must hold integer class labels, got dtype {array.dtype}")
    outside = array[(array < 0) | (array >= num_classes)]
    if outside.size:
        raise DataError(f"{name} holds label {int(outside[0])}, expected 0..{num_classes - 1}")
    return array.astype(np.int64)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows true class, columns predicted class, every class 0..K-1 present."""
    y_true = _labels(y_true, "y_true", num_classes)
    y_pred = _labels(y_pred, "y_pred", num_classes)
    if y_true.size != y_pred.size:
        raise DataError(f"y_true has {y_true.size} labels but y_pred has {y_pred.size}")
    if y_true.size == 0:
        raise DataError("no test samples to evaluate")
    return sk_confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def metrics_from_confusion(confusion: np.ndarray, train_counts: Sequence[int]) -> dict:
    """Accuracies (percent) from a confusion matrix; see :func:`classification_metrics`."""
    num_classes = confusion.shape[0]
    if len(train_counts) != num_classes:
        raise DataError(f"{len(train_counts)} training class counts for {num_classes} classes")
    support = confusion.sum(axis=1)
    correct = np.diag(confusion)
    per_class = [100.0 * int(correct[c]) / int(support[c]) if support[c] else None for c in range(num_classes)]
    present = [acc for acc in per_class if acc is not None]
    groups = class_groups(train_counts)
    result = {
        "accuracy": 100.0 * int(correct.sum()) / int(support.sum()),
        "mean_class_accuracy": _mean(present),
    }
    for group in GROUPS:
        result[group] = _mean([per_class[c] for c in groups[group] if per_class[c] is not None])
    result.update(
        num_samples=int(support.sum()),
        num_classes=num_classes,
        num_test_classes=len(present),
        group_sizes={g: len(groups[g]) for g in GROUPS},
        group_test_classes={g: sum(per_class[c] is not None for c in groups[g]) for g in GROUPS},
        per_class=per_class,
    )
    return result


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], train_counts: Sequence[int], num_classes: int
) -> dict:
    """Top-1 accuracies in percent.

    ``accuracy`` is over samples; ``mean_class_accuracy`` averages the per-class accuracy
    (recall) of the classes present in ``y_true``, as the reference does;
    ``many``, ``medium`` and ``few`` average it over each group's present classes, the
    groups set by the *training* counts (:func:`liftplus.data.longtail.class_groups`).
    ``per_class`` lists each label's accuracy or None; ``group_sizes`` counts each
    group's classes and ``group_test_classes`` those of them in the test set.
    (The confusion matrix is not included: it is K x K; see :func:`confusion_matrix`.)
    """
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, num_classes), train_counts)


def confusion_summary(confusion: np.ndarray, classnames: Sequence[str], top: int = 10) -> list[dict]:
    """The ``top`` most frequent mistakes, most first (ties by true then predicted label).

    Each is ``{true, predicted, true_label, predicted_label, count, share}``, ``share``
    being the fraction of the true class's test samples that went to ``predicted``.
    """
    confusion = np.asarray(confusion)
    if len(classnames) != confusion.shape[0]:
        raise DataError(f"{len(classnames)} class names for a {confusion.shape[0]}-class confusion matrix")
    mistakes = confusion.copy()
    np.fill_diagonal(mistakes, 0)
    true_idx, pred_idx = np.nonzero(mistakes)
    counts = mistakes[true_idx, pred_idx]
    order = np.lexsort((pred_idx, true_idx, -counts))[:top]
    support = confusion.sum(axis=1)
    return [
        {
            "true": classnames[t],
            "predicted": classnames[p],
            "true_label": int(t),
            "predicted_label": int(p),
            "count": int(mistakes[t, p]),
            "share": int(mistakes[t, p]) / int(support[t]),
        }
        for t, p in zip(true_idx[order], pred_idx[order])
    ]
