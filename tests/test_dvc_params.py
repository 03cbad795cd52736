"""dvc.yaml lists params per key: every param that can change a stage's outputs must be among them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from liftplus.params import Params

REPO = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

SECTIONS_READ = {
    "shard": ["data"],
    "validate": ["validate"],
    "init_head": ["init_head"],
    "train": ["model", "train"],
    "evaluate": ["evaluate"],
    "register": ["register"],
}
"""The params sections whose every key can change what the stage writes."""

NOT_RESULTS = {
    "data.lists": "a folder of deps: the files in it are hashed, its path changes nothing",
    "train.workers": "loader processes: the same batches for any count (tested)",
    "train.prefetch": "batches in flight",
    "train.persistent_workers": "worker lifetime",
    "train.verify_checksums": "a check before training; it changes nothing it writes",
    "evaluate.workers": "loader processes",
    "evaluate.prefetch": "batches in flight",
    "evaluate.persistent_workers": "worker lifetime",
}
"""Params left out of dvc.yaml on purpose, and why: changing one must not rerun a stage."""


def schema_keys(section: str) -> set[str]:
    field = (
        Params.model_fields[section]
        if section in Params.model_fields
        else next(f for f in Params.model_fields.values() if f.alias == section)
    )
    return {f"{section}.{name}" for name in field.annotation.model_fields}


@pytest.mark.parametrize("stage", sorted(SECTIONS_READ))
def test_every_param_that_shapes_outputs_is_listed(stage):
    listed = set(STAGES[stage]["params"])
    needed = set().union(*(schema_keys(s) for s in SECTIONS_READ[stage])) - set(NOT_RESULTS)
    assert sorted(needed - listed) == [], f"dvc.yaml: stage {stage} misses these params"


def test_params_are_listed_per_key_and_exist():
    every_key = set().union(
        *(schema_keys(s) for s in ("data", "validate", "model", "init_head", "train", "evaluate", "register"))
    )
    for stage, definition in STAGES.items():
        for key in definition.get("params", []):
            assert isinstance(key, str) and "." in key, f"{stage}: list params per key, not {key!r}"
            assert key in every_key, f"{stage}: {key} is no param of params.yaml"
    assert set(NOT_RESULTS) <= every_key
