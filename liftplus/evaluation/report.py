"""Evaluation outputs: the metrics file and the rows behind its plots."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from liftplus.errors import CheckpointError
from liftplus.evaluation.metric_names import TEST_SECTION, rounded
from liftplus.evaluation.metrics import GROUPS, confusion_matrix, confusion_summary, metrics_from_confusion


def accuracy_section(m: dict, num_samples: int) -> dict:
    """The headline section of eval.json from :func:`liftplus.evaluation.metrics.metrics_from_confusion`'s result."""
    section = {"acc": rounded(m["accuracy"]), "acc_mean_class": rounded(m["mean_class_accuracy"])}
    section.update({f"acc_{group}": rounded(m[group]) for group in GROUPS})
    section["images"] = num_samples
    section.update({f"classes_{group}": m["group_sizes"][group] for group in GROUPS})
    return section


def check_classnames(model_path: str, trained: list[str] | None, shards: list[str]) -> None:
    """A checkpoint trained on other classes (even as many) must not be scored against these labels."""
    if trained is None or list(trained) == list(shards):
        return
    label = next((i for i, (a, b) in enumerate(zip(trained, shards)) if a != b), None)
    if label is None:
        difference = f"{len(trained)} classes, the shards have {len(shards)}"
    else:
        difference = f"label {label} is {trained[label]!r}, the shards say {shards[label]!r}"
    raise CheckpointError(
        f"{model_path}: trained for other class names ({difference}); evaluate it on the data it was trained for"
    )


def evaluation_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    train_counts: Sequence[int],
    classnames: Sequence[str],
    tte: bool,
    tte_expand: int | None = None,
) -> dict:
    """Metrics (for ``eval.json``) plus per-class and per-sample rows (for the plots)."""
    y_pred = logits.argmax(dim=1).tolist()
    y_true = labels.tolist()
    confusion = confusion_matrix(y_true, y_pred, len(classnames))
    m = metrics_from_confusion(confusion, train_counts)
    metrics = {
        TEST_SECTION: accuracy_section(m, len(y_true)),
        "tte": tte,
        "tte_expand": tte_expand,
        "most_confused": confusion_summary(confusion, classnames, top=5),
    }
    per_class = [
        {"label": k, "class": classnames[k], "train_count": int(train_counts[k]), "accuracy": rounded(acc)}
        for k, acc in enumerate(m["per_class"])
        if acc is not None
    ]
    predictions = [{"actual": classnames[t], "predicted": classnames[p]} for t, p in zip(y_true, y_pred)]
    return {"metrics": metrics, "per_class": per_class, "predictions": predictions}
