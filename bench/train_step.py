"""Training step time and memory: lift+ (AdaptFormer + cosine head) against full fine-tuning.

ViT-B-16 (open_clip, random init), 224 px, CPU fp32, batch 8, K = 1000 classes.
Both arms are ``build_model`` LiftModels on the same code path (``PeftBlock``
with the same attention: fused ``sdpa`` by default, open_clip's stock
attention for the ``stock_attention_*`` figures); they differ only in
``peft``: ``adaptformer`` for lift+, ``full`` for fft.

A step is what ``liftplus.training.loop.fit`` does per batch on CPU (its own ``train_step``): forward,
logit-adjusted loss, backward, SGD (momentum 0.9, weight decay 5e-4,
``foreach=False``) step, zero_grad; ``set_determinism`` as in ``fit``. The
step time is the median of the timed steps after a warm-up step, in two
timing processes per arm run in the order lift+, fft, fft, lift+; each arm
keeps its faster process. The step CPU time (``time.process_time``, all
threads) is reported beside it.

Memory: each arm runs in its own process. Once the model is built (and the
input batch made), we read the resident set size and reset the kernel's
high-water mark (``/proc/self/clear_refs`` ← 5); after the first 3 steps,
``VmHWM`` is the peak resident memory during training. Peak minus after-build is what
training adds: activations, gradients, optimizer state.

The headline memory figures come from a second pair of processes run with
glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``): every
tensor then lives in its own mapping and goes back to the kernel when freed,
so the peak RSS is the peak of live tensors. With glibc's default (a threshold
that grows to 32 MiB as tensors are freed) freed activations stay in the heap
and the peak also counts what the allocator kept: lift+ 1.05 GiB against the
0.68 GiB it uses (``allocator_*`` figures: the RSS of the timing processes).
"""

from __future__ import annotations

import argparse
import gc
import re
import time
from pathlib import Path

from bench.common import BenchContext, median, ratio, report, run_child

GIB = 1024**3
NUM_CLASSES = 1000
BATCH = 8
RES = 224
ARMS = {"lift": "adaptformer", "fft": "full"}
MEMORY_STEPS = 3
"""The peak is read after this many steps (warm-up included; momentum buffers exist from the
first). Read after 7 steps, the lift+ peak came out up to ~0.1 GiB higher in our runs, fft's not."""

FIGURES = {
    "step_time_ratio": "ratio: lift+ ÷ fft seconds per training step (fused attention, both arms)",
    "peak_memory_ratio": "ratio: lift+ ÷ fft memory added by training (peak of live tensors: RSS with a 64 KiB mmap threshold)",
    "allocator_peak_memory_ratio": "ratio: lift+ ÷ fft peak RSS added, glibc's default malloc (freed memory kept counts)",
    "allocator_lift_train_added_memory_gib": "lift+: peak RSS − after build with glibc's default malloc, GiB",
    "allocator_fft_train_added_memory_gib": "fft: peak RSS − after build with glibc's default malloc, GiB",
    "step_cpu_time_ratio": "ratio: lift+ ÷ fft CPU seconds (all threads) per step: less sensitive to other load",
    "lift_step_seconds": "lift+ step (fwd + LA loss + bwd + SGD), ViT-B-16, 224 px, batch 8, CPU fp32, median, s",
    "fft_step_seconds": "full fine-tuning step, same setting, s",
    "lift_step_cpu_seconds": "lift+ step, CPU time of the process (all threads), median, s",
    "fft_step_cpu_seconds": "fft step, CPU time of the process (all threads), median, s",
    "lift_train_added_memory_gib": "lift+: peak resident memory during training − after build, GiB",
    "fft_train_added_memory_gib": "fft: peak resident memory during training − after build, GiB",
    "lift_trainable_parameters": "lift+ trainable parameters (AdaptFormer + head, K = 1000)",
    "fft_trainable_parameters": "fft trainable parameters (image blocks + head)",
    "stock_attention_step_time_ratio": "ratio: lift+ ÷ fft step time with open_clip's stock attention (sdpa false)",
    "stock_attention_peak_memory_ratio": "ratio: lift+ ÷ fft training-added memory, stock attention",
    "stock_attention_step_cpu_time_ratio": "ratio: lift+ ÷ fft CPU seconds per step, stock attention",
    "stock_attention_lift_step_seconds": "lift+ step with stock attention, s",
    "stock_attention_fft_step_seconds": "fft step with stock attention, s",
    "stock_attention_lift_step_cpu_seconds": "lift+ step with stock attention, CPU s",
    "stock_attention_fft_step_cpu_seconds": "fft step with stock attention, CPU s",
    "stock_attention_lift_train_added_memory_gib": "lift+ training-added memory, stock attention, GiB",
    "stock_attention_fft_train_added_memory_gib": "fft training-added memory, stock attention, GiB",
}


def _status_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def reset_peak_rss() -> bool:
    """Set VmHWM to the current RSS (Linux ≥ 4.0); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure_arm(peft: str, sdpa: bool, warmup: int, steps: int) -> dict[str, float]:
    """One arm, in this process: step times and training-added memory."""
    import torch

    from liftplus.model import ModelConfig, build_model
    from liftplus.runtime import set_determinism
    from liftplus.training.losses import LogitAdjustedLoss
    from liftplus.training.step import train_step

    set_determinism(0, True)
    model = build_model(ModelConfig(name="ViT-B-16", pretrained=None, peft=peft, num_classes=NUM_CLASSES, sdpa=sdpa))
    model.train()
    counts = [max(1, int(500 * (1 / 100) ** (k / (NUM_CLASSES - 1)))) for k in range(NUM_CLASSES)]
    loss_fn = LogitAdjustedLoss(counts)
    params = model.trainable_parameters()
    optimizer = torch.optim.SGD(params, lr=0.02, momentum=0.9, weight_decay=5e-4, foreach=False)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, RES, RES, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (BATCH,), generator=generator)

    gc.collect()
    after_build_kib = _status_kib("VmRSS")
    if not reset_peak_rss():
        raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs): memory figures need Linux")

    times, cpu_times = [], []
    peak_kib = None
    for step in range(warmup + steps):
        started, cpu_started = time.perf_counter(), time.process_time()
        loss, _ = train_step(model, loss_fn, images, labels, optimizer)
        if step >= warmup:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
        if step + 1 == MEMORY_STEPS:
            peak_kib = _status_kib("VmHWM")
    if not torch.isfinite(loss):
        raise RuntimeError(f"loss is {loss.item()}")
    if peak_kib is None:
        peak_kib = _status_kib("VmHWM")
    return {
        "step_seconds": median(times),
        "step_cpu_seconds": median(cpu_times),
        "train_added_memory_gib": (peak_kib - after_build_kib) * 1024 / GIB,
        "after_build_memory_gib": after_build_kib * 1024 / GIB,
        "trainable_parameters": float(sum(p.numel() for p in params)),
    }


LIVE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def compare(ctx: BenchContext, sdpa: bool, prefix: str, warmup: int, steps: int, rounds: int) -> dict[str, float]:
    """Both arms' step times, best of ``rounds`` timing processes each, and their memory.

    The timing processes run lift+, fft, then fft, lift+ (ABBA): a burst of load
    from outside during one arm's steps (seen here: lift+ 7.3 s a step in one
    run, 6.0 in the next) then has the other arm's round to be outvoted by.
    """
    timings: dict[str, list[dict[str, float]]] = {name: [] for name in ARMS}
    args = {name: ["--child", "--peft", peft, "--sdpa", str(int(sdpa))] for name, peft in ARMS.items()}
    for r in range(rounds):
        for name in ARMS if r % 2 == 0 else reversed(list(ARMS)):
            timings[name].append(
                run_child(
                    "bench.train_step", [*args[name], "--warmup", str(warmup), "--steps", str(steps)], timeout=900
                )
            )
    arms, allocator = {}, {}
    for name in ARMS:
        arms[name] = min(timings[name], key=lambda t: t["step_seconds"])
        allocator[name] = timings[name][0]["train_added_memory_gib"]
        live = run_child(
            "bench.train_step",
            [*args[name], "--warmup", "0", "--steps", str(MEMORY_STEPS)],
            timeout=900,
            env=LIVE_MEMORY_ENV,
        )
        arms[name]["train_added_memory_gib"] = live["train_added_memory_gib"]
        rounds_text = ", ".join(f"{t['step_seconds']:.2f}" for t in timings[name])
        ctx.log(
            f"{prefix or 'sdpa_'}{name}: {arms[name]['step_seconds']:.2f} s/step (rounds: {rounds_text}; "
            f"{arms[name]['step_cpu_seconds']:.2f} CPU s), +{live['train_added_memory_gib']:.2f} GiB live "
            f"(+{allocator[name]:.2f} GiB RSS with glibc's default malloc)"
        )
    figures = {
        f"{prefix}step_time_ratio": ratio(arms["lift"]["step_seconds"], arms["fft"]["step_seconds"]),
        f"{prefix}step_cpu_time_ratio": ratio(arms["lift"]["step_cpu_seconds"], arms["fft"]["step_cpu_seconds"]),
        f"{prefix}peak_memory_ratio": ratio(
            arms["lift"]["train_added_memory_gib"], arms["fft"]["train_added_memory_gib"]
        ),
    }
    for name, measured in arms.items():
        figures[f"{prefix}{name}_step_seconds"] = measured["step_seconds"]
        figures[f"{prefix}{name}_step_cpu_seconds"] = measured["step_cpu_seconds"]
        figures[f"{prefix}{name}_train_added_memory_gib"] = measured["train_added_memory_gib"]
        if not prefix:
            figures[f"{name}_trainable_parameters"] = measured["trainable_parameters"]
    if not prefix:
        figures["allocator_peak_memory_ratio"] = ratio(allocator["lift"], allocator["fft"])
        for name, gib in allocator.items():
            figures[f"allocator_{name}_train_added_memory_gib"] = gib
    return figures


STOCK_COST = 1.3
"""Stock attention arms take about this many times as long as the fused ones (DESIGN: 0.77 vs 0.68)."""


def run(ctx: BenchContext) -> dict[str, float]:
    warmup, steps, rounds = (1, 3, 1) if ctx.quick else (1, 3, 2)
    started = time.perf_counter()
    figures = compare(ctx, sdpa=True, prefix="", warmup=warmup, steps=steps, rounds=rounds)
    expected = STOCK_COST * (time.perf_counter() - started)
    if ctx.quick:
        ctx.log("stock attention arms skipped (--quick)")
    elif ctx.seconds_left() < expected:
        ctx.log(
            f"stock attention arms skipped: they would take ~{expected:.0f} s, "
            f"{max(ctx.seconds_left(), 0):.0f} s left of the budget"
        )
    else:
        figures.update(compare(ctx, sdpa=False, prefix="stock_attention_", warmup=warmup, steps=steps, rounds=rounds))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.train_step")
    parser.add_argument("--child", action="store_true", help="measure one arm in this process")
    parser.add_argument("--peft", default="adaptformer")
    parser.add_argument("--sdpa", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if not args.child:
        parser.error("run through `python -m bench --only train_step`; --child measures one arm")
    report(measure_arm(args.peft, bool(args.sdpa), args.warmup, args.steps))


if __name__ == "__main__":
    main()
