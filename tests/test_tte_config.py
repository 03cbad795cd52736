"""The test-time resize: one rule (``eval_resize``) for evaluate, predict and the benches, the
reference's numbers, ``evaluate.tte_expand``, and which configuration predict takes by default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import pytest
import yaml

from liftplus.data.transforms import eval_resize
from liftplus.errors import ParamsError
from liftplus.evaluation.predict import REFERENCE_CONFIG, EvalConfig, evaluated_config, version_label
from liftplus.params import EvaluateParams, parse_params
from liftplus.registry import ModelVersion

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def reference_short_side(resolution: int, tte: bool, expand: Optional[int]) -> int:
    """The reference's ``build_data`` (trainer.py), its ``Resize`` size for the test split."""
    if tte:
        expand = expand if expand is not None else 24
    else:
        expand = expand if expand is not None else resolution // 7
    return resolution + expand


@pytest.mark.parametrize(
    "res, tte, expand, short_side",
    [
        (224, True, None, 248),  # the paper: ViT-B/16, TTE
        (224, False, None, 256),  # without TTE: res + res // 7
        (224, True, 24, 248),  # an explicit expand is used as given...
        (224, False, 24, 248),  # ...in both modes
        (224, True, 0, 224),
        (32, True, None, 35),  # the demo's tiny ViT: round(24 * 32 / 224) = 3
        (32, False, None, 36),  # 32 // 7 = 4
        (384, True, None, 425),  # the same share at 384 px: expand 41 (the reference adds 24: 408)
        (384, True, 24, 408),  # what a 384-px preset sets to reproduce the reference
        (384, False, None, 438),
        (336, True, None, 372),  # ViT-L/14@336px: expand 36
    ],
)
def test_eval_resize_gives_the_reference_numbers(res, tte, expand, short_side):
    assert eval_resize(res, tte, expand) == short_side


@pytest.mark.parametrize("res", [224, 336, 384])  # every resolution among the reference's backbone configs
@pytest.mark.parametrize("tte", [True, False])
def test_eval_resize_is_the_reference_where_the_reference_is_defined(res, tte):
    """An explicit expand is the reference's at every resolution; the default is too but for TTE away from 224 px."""
    for expand in (0, 4, 24, 41):
        assert eval_resize(res, tte, expand) == reference_short_side(res, tte, expand)
    if res == 224 or not tte:
        assert eval_resize(res, tte, None) == reference_short_side(res, tte, None)
    else:
        assert eval_resize(res, tte, None) > reference_short_side(res, tte, None)


def test_eval_resize_refuses_nonsense():
    with pytest.raises(ValueError, match="expand is -1"):
        eval_resize(224, True, -1)
    with pytest.raises(ValueError, match="res is 0"):
        eval_resize(0, True)


# --- evaluate.tte_expand ------------------------------------------------------------------------


def test_tte_expand_defaults_to_null_in_the_params_and_in_params_yaml():
    assert EvaluateParams().tte_expand is None
    written = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())["evaluate"]
    assert written["tte_expand"] is None and written["tte"] is True
    assert parse_params({"evaluate": {"tte_expand": None}}, "p.yaml").evaluate.tte_expand is None
    assert parse_params({"evaluate": {"tte_expand": 24}}, "p.yaml").evaluate.tte_expand == 24


def test_a_negative_tte_expand_is_refused():
    with pytest.raises(ParamsError, match="'evaluate.tte_expand' is -1: input should be greater than or equal to 0"):
        parse_params({"evaluate": {"tte_expand": -1}}, "p.yaml")


def test_the_resize_is_computed_in_one_place():
    """No module but transforms.py works the short side out for itself (``res // 7``, ``+ 24``, ``* res // 224``)."""
    pattern = re.compile(r"//\s*7\b|\bTTE_EXPAND\b|\+\s*24\b|\*\s*res\s*//\s*224")
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}"
        for folder in ("liftplus", "stages", "bench", "flows")
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py"))
        if path.name != "transforms.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line.split("#")[0])
    ]
    assert offenders == []


# --- what predict runs by default ---------------------------------------------------------------


def version(**metrics) -> ModelVersion:
    return ModelVersion(
        name="liftplus-classifier",
        version="v0.0.3",
        tag="liftplus-classifier@v0.0.3",
        commit="0" * 40,
        created_at="2025-01-01T00:00:00",
        stages=["prod"],
        metrics=metrics,
    )


def test_a_version_recording_tte_is_predicted_as_evaluated():
    params = EvaluateParams(tte=True, tte_expand=8)
    assert evaluated_config(version(acc=1.0, tte=False), params) == EvalConfig(
        False, 8, "liftplus-classifier@v0.0.3's registration"
    )
    assert evaluated_config(version(tte=True, tte_expand=24), params).expand == 24
    assert evaluated_config(version(tte=True, tte_expand=None), params).expand is None
    assert evaluated_config(version(tte=True, tte_expand="wide"), params).expand == 8  # not an expand: params'
    assert evaluated_config(version(tte=True), None) == EvalConfig(
        True, None, "liftplus-classifier@v0.0.3's registration"
    )


def test_params_then_the_reference_decide_otherwise():
    assert evaluated_config(version(acc=1.0), EvaluateParams(tte=False)) == EvalConfig(False, None, "params")
    assert evaluated_config(version(tte="yes"), EvaluateParams(tte=False)).tte is False
    assert evaluated_config(None, EvaluateParams(tte=True, tte_expand=4)) == EvalConfig(True, 4, "params")
    assert evaluated_config(None, None) == REFERENCE_CONFIG == EvalConfig(True, None, "the reference's default")
    assert evaluated_config(version(), None) == REFERENCE_CONFIG


@pytest.mark.parametrize(
    "reference, label",
    [
        ("v0.0.3", "liftplus-classifier@v0.0.3"),
        ("liftplus-classifier@v0.0.3", "liftplus-classifier@v0.0.3"),
        ("prod", "liftplus-classifier#prod → v0.0.3"),
        ("liftplus-classifier#prod", "liftplus-classifier#prod → v0.0.3"),
        ("latest", "liftplus-classifier@latest → v0.0.3"),
        ("liftplus-classifier@latest", "liftplus-classifier@latest → v0.0.3"),
    ],
)
def test_a_version_is_named_as_asked_with_the_version_it_stands_for(reference, label):
    assert version_label(reference, version()) == label
