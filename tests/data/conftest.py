"""Fixtures shared by the data tests; the fake datasets themselves are in fake_raw_data.py."""

from __future__ import annotations

import pytest

from liftplus.params import DataParams


@pytest.fixture
def data_params():
    """``DataParams`` with overrides, as params.yaml's data section would give."""

    def make(**overrides) -> DataParams:
        return DataParams(**overrides)

    return make
