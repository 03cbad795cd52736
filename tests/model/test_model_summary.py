import json

import pytest
import typer
from typer.testing import CliRunner

from liftplus.commands.peft_summary import peft_summary
from liftplus.model import TINY_MODEL, ModelConfig, build_model, load_backbone, parameter_summary

L, D = 4, 64


def test_parameter_summary_counts_the_tiny_model():
    model = build_model(ModelConfig(num_classes=100))
    summary = parameter_summary(model)
    clip, _ = load_backbone(TINY_MODEL)
    clip_total = sum(p.numel() for p in clip.parameters())
    image_encoder = sum(p.numel() for p in clip.visual.parameters())
    r = 8  # 2 ** floor(log2(100 / 8))
    peft = L * (2 * D * r + r + 3 * D + 1)
    head = 100 * D
    assert summary["bottleneck"] == r
    assert summary["clip_parameters"] == clip_total
    assert summary["total_parameters"] == clip_total + peft + head
    assert summary["image_encoder_parameters"] == image_encoder + peft + head
    assert (summary["trainable_peft"], summary["trainable_head"], summary["trainable_other"]) == (peft, head, 0)
    assert summary["trainable_percent_of_model"] == pytest.approx(100 * (peft + head) / (clip_total + peft + head))
    assert summary["trainable_percent_of_image_encoder"] == pytest.approx(
        100 * (peft + head) / (image_encoder + peft + head)
    )


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(peft_summary)
    return app


def test_peft_summary_command_prints_json_that_agrees_with_the_formula():
    result = CliRunner().invoke(_app(), ["--model", TINY_MODEL, "-k", "365", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    r = 32  # 2 ** floor(log2(365 / 8))
    assert summary["bottleneck"] == r
    assert summary["trainable_total"] == L * (2 * D * r + r + 3 * D + 1) + 365 * D
    assert summary["adaptformer_formula"] == summary["trainable_total"]


def test_peft_summary_command_prints_a_table():
    result = CliRunner().invoke(_app(), ["--model", TINY_MODEL, "--num-classes", "10", "--peft", "lora"])
    assert result.exit_code == 0, result.output
    assert "liftplus-tiny-vit + lora" in result.output
    trainable = 2 * L * 2 * D * 1 + 10 * D  # r = 1 for K=10
    assert f"{trainable:,}" in result.output


def test_peft_summary_command_rejects_an_unknown_peft_in_one_line():
    result = CliRunner().invoke(_app(), ["--model", TINY_MODEL, "--peft", "magic"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: --peft is 'magic', expected one of adaptformer, lora, adapter, vpt-shallow, vpt-deep, "
        "ssf, bitfit, full, none, aft"
    ]
