import json

import numpy as np
import pytest

from liftplus.errors import DataError
from liftplus.evaluation.metrics import classification_metrics, confusion_matrix, confusion_summary

TRAIN_COUNTS = [300, 150, 60, 30, 10, 5]  # many {0, 1}, medium {2, 3}, few {4, 5}
NAMES = ["a", "b", "c", "d", "e", "f"]

# (true, predictions) per class; correct: 3/4, 2/2, 1/4, 1/2, 0/2, 1/1
CASE = {
    0: [0, 0, 0, 2],
    1: [1, 1],
    2: [2, 0, 0, 3],
    3: [3, 2],
    4: [5, 5],
    5: [5],
}


def labels(case):
    y_true = [c for c, preds in case.items() for _ in preds]
    y_pred = [p for preds in case.values() for p in preds]
    return y_true, y_pred


def as_json(result):
    return json.loads(json.dumps(result, allow_nan=False))


def test_hand_made_case():
    y_true, y_pred = labels(CASE)
    m = classification_metrics(y_true, y_pred, TRAIN_COUNTS, 6)
    assert m["accuracy"] == pytest.approx(100 * 8 / 15)
    assert m["mean_class_accuracy"] == pytest.approx((75 + 100 + 25 + 50 + 0 + 100) / 6)
    assert m["many"] == pytest.approx(87.5)
    assert m["medium"] == pytest.approx(37.5)
    assert m["few"] == pytest.approx(50.0)
    assert m["per_class"] == pytest.approx([75.0, 100.0, 25.0, 50.0, 0.0, 100.0])
    assert m["group_sizes"] == {"many": 2, "medium": 2, "few": 2}
    assert m["group_test_classes"] == {"many": 2, "medium": 2, "few": 2}
    assert (m["num_samples"], m["num_classes"], m["num_test_classes"]) == (15, 6, 6)
    assert as_json(m) == m


def test_class_absent_from_test_set_is_none_and_left_out():
    case = dict(CASE)
    del case[5]  # class 5 still predicted for class 4, but never a true label
    y_true, y_pred = labels(case)
    m = classification_metrics(y_true, y_pred, TRAIN_COUNTS, 6)
    assert m["per_class"][5] is None
    assert m["accuracy"] == pytest.approx(100 * 7 / 14)
    assert m["mean_class_accuracy"] == pytest.approx(250 / 5)
    assert m["few"] == pytest.approx(0.0)
    assert m["group_test_classes"] == {"many": 2, "medium": 2, "few": 1}
    assert as_json(m) == m


def test_empty_group_is_none_never_nan():
    # four classes, none under 20 training images: no few class at all
    y_true, y_pred = [0, 0, 1, 2, 3, 3], [0, 1, 1, 2, 3, 0]
    m = classification_metrics(y_true, y_pred, [300, 150, 60, 30], 4)
    assert m["few"] is None
    assert m["many"] == pytest.approx((50 + 100) / 2)
    assert m["medium"] == pytest.approx((100 + 50) / 2)
    assert m["group_sizes"]["few"] == 0
    as_json(m)


def test_group_with_no_test_sample_is_none():
    y_true, y_pred = [0, 1, 2, 3], [0, 1, 3, 3]
    m = classification_metrics(y_true, y_pred, TRAIN_COUNTS, 6)
    assert m["few"] is None
    assert m["group_sizes"]["few"] == 2 and m["group_test_classes"]["few"] == 0
    assert m["medium"] == pytest.approx(50.0)
    as_json(m)


def test_accepts_numpy_and_matches_sklearn_balanced_accuracy():
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 6, 200))
    m = classification_metrics(y_true, y_pred, TRAIN_COUNTS, 6)
    assert m["mean_class_accuracy"] == pytest.approx(100 * balanced_accuracy_score(y_true, y_pred))
    assert m["accuracy"] == pytest.approx(100 * np.mean(y_true == y_pred))
    as_json(m)


def test_confusion_matrix_and_summary_by_hand():
    y_true, y_pred = labels(CASE)
    confusion = confusion_matrix(y_true, y_pred, 6)
    assert confusion.shape == (6, 6)
    assert confusion[2].tolist() == [2, 0, 1, 1, 0, 0]
    summary = confusion_summary(confusion, NAMES, top=4)
    assert [(s["true_label"], s["predicted_label"], s["count"]) for s in summary] == [
        (2, 0, 2),
        (4, 5, 2),
        (0, 2, 1),
        (2, 3, 1),
    ]
    assert summary[0]["true"] == "c" and summary[0]["predicted"] == "a"
    assert summary[0]["share"] == pytest.approx(0.5)
    assert summary[1]["share"] == pytest.approx(1.0)
    assert len(confusion_summary(confusion, NAMES)) == 5
    assert as_json(summary) == summary


def test_confusion_summary_of_a_perfect_classifier_is_empty():
    assert confusion_summary(confusion_matrix([0, 1, 2], [0, 1, 2], 3), ["x", "y", "z"]) == []


def test_bad_inputs_are_data_errors():
    with pytest.raises(DataError, match="label 6"):
        classification_metrics([0, 6], [0, 1], TRAIN_COUNTS, 6)
    with pytest.raises(DataError, match="y_pred has 1"):
        classification_metrics([0, 1], [0], TRAIN_COUNTS, 6)
    with pytest.raises(DataError, match="no test samples"):
        classification_metrics([], [], TRAIN_COUNTS, 6)
    with pytest.raises(DataError, match="5 training class counts"):
        classification_metrics([0], [0], TRAIN_COUNTS[:5], 6)
    with pytest.raises(DataError, match="class names"):
        confusion_summary(np.eye(3, dtype=int), ["x", "y"])
