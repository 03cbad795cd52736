"""The names and rounding of the metrics files (eval.json), apart from the code that computes them,
so the registry and ``liftplus models`` read them without importing torch."""

from __future__ import annotations

TEST_SECTION = "test"
"""eval.json's headline metrics sit under this key, so `dvc exp show` names them ``test.acc``,
``test.acc_few``, ...: no params section is called ``test``, and a class *count* (``classes_few``)
can never be read as an accuracy."""
ACCURACY_KEYS = ("acc", "acc_mean_class", "acc_many", "acc_medium", "acc_few")
"""The headline accuracies (percent), in the order tables show them."""
DIGITS = 2
"""Accuracies are stored rounded: 46.94, never 46.940000000000005 (in eval.json and in registry tags)."""


def rounded(value: float | None, digits: int = DIGITS) -> float | None:
    return None if value is None else round(float(value), digits)
