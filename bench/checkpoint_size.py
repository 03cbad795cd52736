"""Checkpoint size: the compact lift+ checkpoint against the whole model's weights.

Numerator: ``save_checkpoint`` of a ViT-B-16 lift+ model (AdaptFormer, cosine
head, K = 1000) — the trainable tensors plus the config, the file the train
stage writes. Denominator: ``torch.save`` of the state dict of the whole
open_clip ViT-B-16 model (image and text towers, no tuners): what a full
fine-tuning run would have to store. Both are real files in a temp folder.
Runs in a child process so the 600 MB of weights leave with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import BenchContext, report, run_child

MODEL = "ViT-B-16"
NUM_CLASSES = 1000

FIGURES = {
    "checkpoint_fraction": "ratio: lift+ checkpoint bytes ÷ whole open_clip ViT-B-16 state_dict bytes (K = 1000)",
    "checkpoint_bytes": "lift+ checkpoint file (save_checkpoint), bytes",
    "full_model_bytes": "torch.save of the whole open_clip ViT-B-16 state_dict, bytes",
}


def measure() -> dict[str, float]:
    import torch

    from liftplus.model import ModelConfig, build_model, load_backbone, save_checkpoint

    model = build_model(ModelConfig(name=MODEL, pretrained=None, peft="adaptformer", num_classes=NUM_CLASSES))
    with tempfile.TemporaryDirectory() as tmp:
        compact, full = Path(tmp) / "adapter.pt", Path(tmp) / "full.pt"
        save_checkpoint(compact, model)
        checkpoint_bytes = compact.stat().st_size
        del model
        backbone, _ = load_backbone(MODEL, None)
        torch.save(backbone.state_dict(), full)
        full_bytes = full.stat().st_size
    return {
        "checkpoint_fraction": checkpoint_bytes / full_bytes,
        "checkpoint_bytes": float(checkpoint_bytes),
        "full_model_bytes": float(full_bytes),
    }


def run(ctx: BenchContext) -> dict[str, float]:
    figures = run_child("bench.checkpoint_size", [], timeout=600)
    ctx.log(
        f"checkpoint {figures['checkpoint_bytes'] / 2**20:.1f} MiB, "
        f"full model {figures['full_model_bytes'] / 2**20:.0f} MiB"
    )
    return figures


if __name__ == "__main__":
    report(measure())
