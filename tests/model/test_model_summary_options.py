"""``liftplus peft-summary`` for per-layer placement, combined methods, AFT and the other heads:
each count against a closed-form number from the reference's module shapes (tiny model: L 4, d 64, MLP 256)."""

import json

import pytest
import typer
from typer.testing import CliRunner

from liftplus.commands.peft_summary import peft_summary, per_block_formula
from liftplus.model import TINY_MODEL

L, D, MLP = 4, 64, 256


def _summary(*args: str) -> dict:
    app = typer.Typer()
    app.command()(peft_summary)
    result = CliRunner().invoke(app, ["--model", TINY_MODEL, "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.mark.parametrize(
    "args, tuned, expected",
    [
        # AdaptFormer 2dr + r + 3d + 1 on the tuned blocks, r from their count; + K d
        (["-k", "100", "--layers", "1"], [3], 1 * (2 * D * 32 + 32 + 3 * D + 1) + 100 * D),
        (["-k", "100", "--layers", "2"], [2, 3], 2 * (2 * D * 16 + 16 + 3 * D + 1) + 100 * D),
        (["-k", "100"], [0, 1, 2, 3], 4 * (2 * D * 8 + 8 + 3 * D + 1) + 100 * D),
        (["-k", "100", "--layers", "0,-1"], [0, 3], 2 * (2 * D * 16 + 16 + 3 * D + 1) + 100 * D),
        # BitFit (7d + mlp) + AdaptFormer, K 100
        (["-k", "100", "--peft", "bitfit+adaptformer"], [0, 1, 2, 3], 4 * (704 + 1225) + 6400),
        (["-k", "100", "--peft", "adaptformer,bitfit", "--layers", "1"], [3], 704 + 4321 + 6400),
        # full (4d^2 + 2 d mlp + 9d + mlp = 49984) with BitFit inside it
        (["-k", "10", "--peft", "full+bitfit", "--layers", "1"], [3], 49984 + 640),
        # AFT: sum of int(n * ratio) over the block's weights and biases
        (["-k", "100", "--peft", "aft", "--aft-ratio", "0.01"], [0, 1, 2, 3], 4 * 491 + 6400),
        (["-k", "100", "--peft", "aft", "--aft-ratio", "0.01", "--aft-loc", "attn"], [0, 1, 2, 3], 4 * 163 + 6400),
        (["-k", "100", "--peft", "aft"], [0, 1, 2, 3], 4 * 1598 + 6400),
        # LoRA 4dr (r 1 at K 10), SSF 2(5d + mlp), VPT r d on chosen blocks
        (["-k", "10", "--peft", "lora", "--classifier", "linear"], [0, 1, 2, 3], 4 * 256 + 10 * D + 10),
        (["-k", "10", "--peft", "ssf", "--layers", "3"], [1, 2, 3], 3 * 1152 + 640),
        (["-k", "100", "--peft", "vpt-deep", "--layers", "1,3"], [1, 3], 2 * 32 * D + 6400),
        (["-k", "10", "--classifier", "layernorm"], [0, 1, 2, 3], 4 * (2 * D + 1 + 3 * D + 1) + 640),
    ],
)
def test_counts_agree_with_the_reference_formulas(args, tuned, expected):
    summary = _summary(*args)
    assert summary["tuned_layers"] == tuned
    assert summary["trainable_total"] == expected
    assert summary["formula"] == expected


def test_adaptformer_formula_uses_the_tuned_block_count():
    summary = _summary("-k", "365", "--layers", "2")
    r = 64  # 2 ** floor(log2(365 / 4))
    assert summary["bottlenecks"] == {"adaptformer": r}
    assert summary["adaptformer_formula"] == summary["trainable_total"] == 2 * (2 * D * r + r + 3 * D + 1) + 365 * D


def test_vit_b16_per_block_formulas():
    d, mlp = 768, 3072
    assert per_block_formula("adaptformer", d, mlp, 32) == 2 * 768 * 32 + 32 + 3 * 768 + 1 == 51489
    assert per_block_formula("bitfit", d, mlp, None) == 8448
    assert per_block_formula("full", d, mlp, None) == 7087872  # the ViT-B/16 block, 12 d^2 + 13 d
    assert per_block_formula("aft", d, mlp, None, aft_ratio=1.0) == 7087872 - 4 * d  # all but the two LayerNorms


@pytest.mark.parametrize(
    "args, message",
    [
        (["--peft", "none+lora"], "none cannot be combined"),
        (["--peft", "magic+lora"], "--peft is 'magic'"),
        (["--layers", "x"], "--layers is 'x'"),
        (["--layers", "9"], "model.peft_layers: 9 is not between 0 and the model's 4 blocks"),
        (["--aft-ratio", "2", "--peft", "aft"], "--aft-ratio is 2.0"),
    ],
)
def test_bad_options_are_one_line_errors(args, message):
    app = typer.Typer()
    app.command()(peft_summary)
    result = CliRunner().invoke(app, ["--model", TINY_MODEL, *args])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_table_lists_tuned_blocks_and_the_formula():
    app = typer.Typer()
    app.command()(peft_summary)
    args = ["--model", TINY_MODEL, "-k", "100", "--peft", "bitfit+adaptformer", "--layers", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "bitfit+adaptformer" in result.output and "2, 3" in result.output and "(agrees)" in result.output
