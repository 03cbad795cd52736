"""Where and how a run computes: the device, mixed precision, determinism, the process group.

Shared by training, evaluation, prediction and the benchmarks, so none of them imports the
training loop to learn which device to use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from liftplus.errors import TrainingError


@dataclass
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(name: str, dist_info: Distributed) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainingError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


REFERENCE_PRECISION = "fp16"
"""What ``precision: auto`` is on CUDA: the reference's (training: its ``amp``, fp16 autocast with a
GradScaler; test: its ``fp16``, fp16 weights). bf16 stays a choice (``precision: bf16``) until a GPU
measurement shows it as accurate."""


def resolved_precision(precision: str) -> str:
    return REFERENCE_PRECISION if precision == "auto" else precision


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """Mixed precision on CUDA only: CPU autocast is slow with the stock attention (see DESIGN)."""
    precision = resolved_precision(precision)
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.float16 if precision == "fp16" else torch.bfloat16


def grad_scaler(amp_dtype: Optional[torch.dtype]) -> Optional[torch.amp.GradScaler]:
    """fp16 autocast trains with a GradScaler (the reference's ``amp``); bf16 and fp32 need none."""
    return torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None


def half_weights(precision: str, device: torch.device) -> bool:
    """Whether evaluation runs the reference's test precision: ``fp16`` (or ``auto``) on CUDA means fp16
    *weights* (its ``model.half()``), not fp16 autocast; training's ``fp16`` stays autocast + GradScaler
    (its ``amp``)."""
    return resolved_precision(precision) == "fp16" and device.type == "cuda"


def to_half_weights(model: nn.Module) -> nn.Module:
    """``model``, in place, as the reference's ``model.half()`` leaves its PEFT model: every floating
    tensor in fp16 except the LayerNorms', which stay fp32, compute in fp32 and return their input's
    dtype (its ``NonHalfLayerNorm``)."""
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            module.float()
            module.forward = _in_fp32(module.forward)
        else:
            module._apply(lambda t: t.half() if t.is_floating_point() else t, recurse=False)
    return model


def _in_fp32(forward):
    def run(x: torch.Tensor) -> torch.Tensor:
        return forward(x.float()).to(x.dtype)

    return run


def set_determinism(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def distributed_from_env() -> Distributed:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed()
    return Distributed(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: Distributed, device: torch.device) -> None:
    """One process group per run; each rank on its own GPU, set before NCCL starts (its
    communicator, the decode of ``input: encoded`` and pinned copies then use that GPU)."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend=backend, rank=info.rank, world_size=info.world, device_id=device if device.type == "cuda" else None
        )
