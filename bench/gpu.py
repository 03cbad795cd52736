"""GPU benchmark: our training and evaluation path against the reference's, end to end on one GPU.

``python -m bench.gpu [--images N] [--batch B] [--workers W] [--passes P] [--compile] [--out PATH]``
``python -m bench.gpu --cpu-smoke``  (also what runs when there is no GPU)

One command, inputs included: it writes ``--images`` synthetic 500×375 JPEGs
(``bench/photos.py``, on a process pool) as an ImageFolder tree of 10 classes,
shards them as the ``shard`` stage does (``data.source: imagefolder``,
``max_short_side: 256``), then measures, each arm in its own process on the same GPU,
open_clip ViT-B-16 (random init) at 224 px, batch 128, AdaptFormer + cosine
head for K = 1000 classes (labels are the folders' 10; the logit-adjusted
loss's prior pads the 990 empty classes with one image each — its cost does
not depend on the values):

* ``reference``: ``torchvision.datasets.ImageFolder`` + PIL +
  ``RandomResizedCrop(224, bicubic)`` + ``ToTensor`` + ``Normalize`` in a
  ``DataLoader`` (``pin_memory``, the same workers), the model with open_clip's
  stock attention (``sdpa: false``), fp16 autocast + ``GradScaler``, eager,
  ``SGD`` (momentum 0.9, weight decay 5e-4, torch's default implementation);
* ``ours``: what ``liftplus.train.fit`` runs with the project's defaults:
  ``ShardIndex`` over the shards with ``train_input`` (MDA; ``input: auto``,
  i.e. uint8 crops normalised on the GPU by ``finish_batch``), ``make_loader``
  (pinned, prefetch 4, persistent workers), fused attention (``sdpa: true``),
  bf16 autocast, fused SGD, ``set_determinism`` as ``fit`` calls it;
* ``model_only``: ``ours``' step on one synthetic batch already on the GPU:
  the ceiling the input pipeline can reach;
* ``eval``: ``predict_logits``' loop (``inference_mode``, bf16) over the shards
  with ``eval_input``, batch 256 (``evaluate.batch_size``'s default), centre
  crop, then TTE (five crops: the model sees 5 × 256 per batch), each after the
  resize of ``evaluate.tte_expand: null`` (``eval_resize``: short side 256, 248 with TTE);
* with ``--compile``: ``ours`` and ``model_only`` again under ``torch.compile``
  (compilation falls in the warm-up; on the GPU skipped when under 150 s of
  ``--budget`` is left).

``--input`` (default ``auto``) sets ``ours``' and ``eval``'s hand-off as
``train.input`` / ``evaluate.input`` do (``float``, ``uint8``, ``encoded``);
``--resize`` (default ``pil``) the workers' crop resizer as ``train.resize`` does.

Every step does what ``fit``'s does per batch, the ``.item()`` reads of the
loss and accuracy included (each arm pays the same host syncs). Each arm
reads one stream of batches: ``warm-up`` batches, then the timed ones, at
least ``--passes`` full passes over the photos (the photos repeat, reshuffled,
so no epoch boundary falls inside). Both counts are whole multiples of the
worker count: loader workers deliver batches round-robin, so a span of whole
rounds is timed the same whichever worker is ahead. Images/s = timed images ÷
the wall time from the end of the warm-up to the end of the last step (CUDA
synchronised at both ends). Peak memory: ``torch.cuda.max_memory_allocated``
of the arm's process (reset after the model is built); without CUDA, the
process's peak resident memory instead.

Without CUDA, or with ``--cpu-smoke``, the same code runs on the CPU with small
sizes (16 photos, batch 4, 2 workers, the tiny model at its 32 px unless
``--model`` says otherwise; all arms in one process to save imports), says so,
and writes ``bench/results-gpu-cpu-smoke.json`` rather than ``bench/results-gpu.json``.

The parent process writes the inputs and builds no model. Nothing here
imports dvc, prefect, great expectations, dvclive, gto or sklearn, so the bench
runs on a machine that has PyTorch, torchvision and a few common packages plus
the wheels of ``bench/gpu_wheels.sh`` (run there by ``bench/gpu_device.sh``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

from bench.common import REPO, RESULT_PREFIX, offline_env, report

RESULTS = REPO / "bench" / "results-gpu.json"
SMOKE_RESULTS = REPO / "bench" / "results-gpu-cpu-smoke.json"
SMOKE_NOTE = "no GPU: CPU smoke run with small sizes; the figures are not GPU figures"

GIB = 1024**3
PHOTO_CLASSES = 10
MAX_SHORT_SIDE = 256
"""The project default (``data.max_short_side``)."""
LR = 0.02
"""lift+'s default learning rate."""
EPOCHS = 5
"""lift+'s default epochs: what the MDA schedule is built for (the bench reads epoch 0's crops)."""

GPU_DEFAULTS = dict(
    images=4000, batch=128, eval_batch=256, passes=3, warmup=10, model="ViT-B-16", num_classes=1000, budget=480.0
)
SMOKE_DEFAULTS = dict(
    images=16,
    batch=4,
    eval_batch=4,
    passes=1,
    warmup=1,
    workers=2,
    model="liftplus-tiny-vit",
    num_classes=1000,
    budget=300.0,
)
OPTIONAL_ARM_SECONDS = 150
"""An optional (compiled) arm starts only with at least this much of the budget left."""

REQUIRED = (
    "gpu_reference_images_per_second",
    "gpu_train_images_per_second",
    "gpu_model_only_images_per_second",
    "gpu_train_speedup",
    "gpu_loader_share",
    "gpu_eval_images_per_second",
    "gpu_eval_tte_images_per_second",
)


# --------------------------------------------------------------------------- inputs (parent process)

_NOISE = None


def _photo_worker_init(seed: int) -> None:
    import numpy as np

    from bench.photos import noise_bank

    global _NOISE
    _NOISE = noise_bank(np.random.default_rng(seed))


def _write_photo(job: tuple[str, int, int, int]) -> int:
    import numpy as np

    from bench.photos import jpeg_bytes, synthetic_photo

    root, index, classes, seed = job
    rng = np.random.default_rng([seed, index])
    path = Path(root) / f"class_{index % classes:02d}" / f"img_{index:05d}.jpg"
    data = jpeg_bytes(synthetic_photo(rng, _NOISE))
    path.write_bytes(data)
    return len(data)


def photo_folder(root: Path, count: int, processes: int, classes: int = PHOTO_CLASSES, seed: int = 0) -> Path:
    """``bench.photos.photo_folder``'s tree and photos, written by a pool of ``processes``.

    Each photo has its own generator (``seed``, index), so the photos do not
    depend on the pool's size (they differ from ``bench.photos``' single-stream ones).
    """
    done = root / ".complete"
    stamp = f"{count} {classes} {seed} pool"
    if done.is_file() and done.read_text() == stamp:
        return root
    for c in range(min(classes, count)):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    jobs = [(str(root), i, classes, seed) for i in range(count)]
    # spawn: this process may hold torch's threads; the workers import only numpy and PIL.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(max(1, processes), initializer=_photo_worker_init, initargs=(seed,)) as pool:
        for _ in pool.imap_unordered(_write_photo, jobs, chunksize=max(1, count // (8 * max(1, processes)))):
            pass
    done.write_text(stamp)
    return root


def shard_photos(photos: Path, out_dir: Path, max_short_side: int = MAX_SHORT_SIDE) -> tuple[list[str], list[int]]:
    """The photo folder as liftplus shards (``bench.data_path.shard_photos``); (train shard paths, class counts)."""
    from bench.data_path import shard_photos as write_shards
    from liftplus.data.manifest import read_manifest

    paths = write_shards(photos, out_dir, max_short_side)
    counts = read_manifest(out_dir / "manifest.json")["splits"]["train"]["class_counts"]
    return [str(p) for p in paths], list(counts)


def round_up(n: int, multiple: int) -> int:
    multiple = max(1, multiple)
    return max(multiple, math.ceil(n / multiple) * multiple)


# --------------------------------------------------------------------------- arms (arm processes)


def _log(message: str) -> None:
    print(f"  {message}", file=sys.stderr, flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Memory:
    """Peak device memory (CUDA) or peak resident memory of this process (CPU), from ``reset()`` on."""

    def __init__(self, device):
        self.device = device

    def reset(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # Linux: reset the kernel's high-water mark of the resident set
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass

    def peak_gib(self) -> float:
        import torch

        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        try:
            status = Path("/proc/self/status").read_text()
            kib = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
        except (OSError, StopIteration, ValueError):
            import resource

            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kib * 1024 / GIB


def timed_stream(batches: Iterator, step: Callable[[Any], int], warmup: int, timed: int, device) -> tuple[float, int]:
    """Run ``warmup`` steps, then time ``timed`` more; (images/s over the timed span, images timed)."""
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    started = time.perf_counter()
    seen = 0
    for _ in range(timed):
        seen += step(next(batches))
    _sync(device)
    return seen / (time.perf_counter() - started), seen


class Arms:
    """The arms of one plan, run in this process; each returns its figures."""

    def __init__(self, plan: dict[str, Any]):
        import torch

        self.plan = plan
        self.device = torch.device(plan["device"])
        self.memory = _Memory(self.device)

    # ----- shared pieces

    def build(self, sdpa: bool):
        from liftplus.model import ModelConfig, build_model

        config = ModelConfig(
            name=self.plan["model"],
            pretrained=None,
            peft="adaptformer",
            num_classes=self.plan["num_classes"],
            sdpa=sdpa,
        )
        return build_model(config)

    def loss_fn(self):
        from liftplus.losses import LogitAdjustedLoss

        counts = list(self.plan["class_counts"])
        counts += [1] * (self.plan["num_classes"] - len(counts))
        return LogitAdjustedLoss(counts).to(self.device)

    def stream_indices(self, batch: int, batches: int) -> list[int]:
        """Dataset indices for ``batches`` full batches: the photos over and over (the sampler shuffles them)."""
        n = sum(self.plan["class_counts"])  # the train shards' samples (the flat folder's test hold-out is not in them)
        return [i % n for i in range(batch * batches)]

    def our_step(self, model, loss_fn) -> Callable:
        """``fit``'s step for one micro-batch, by construction: ``liftplus.train_step.train_step``
        (accumulation 1, bf16 on CUDA: no scaler), then the loss and accuracy reads fit makes."""
        import torch

        from liftplus.runtime import autocast_dtype
        from liftplus.train_step import train_step

        device = self.device
        amp_dtype = autocast_dtype("auto", device)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=LR, momentum=0.9, weight_decay=5e-4, fused=True if device.type == "cuda" else None
        )

        def step(images, labels) -> int:
            loss, logits = train_step(model, loss_fn, images, labels, optimizer, amp_dtype=amp_dtype)
            n = labels.numel()
            loss.item()
            (logits.argmax(dim=1) == labels).sum().item()
            return n

        return step

    def _train_result(self, name: str, rate: float, seen: int, seconds: float) -> dict[str, Any]:
        peak = self.memory.peak_gib()
        _log(f"{name}: {rate:.1f} images/s over {seen} images, peak memory {peak:.2f} GiB ({seconds:.0f} s)")
        return {"rate": rate, "peak_gib": peak, "timed_images": seen, "seconds": seconds}

    def our_model(self):
        """The model and loss of ``ours`` and ``model_only``, in train mode on the device, after
        ``set_determinism`` as ``fit`` calls it (``train.deterministic``'s default: true)."""
        from liftplus.runtime import set_determinism

        set_determinism(0, True)
        model = self.build(sdpa=True).to(self.device)
        model.train()
        return model, self.loss_fn()

    # ----- the arms

    def reference(self) -> dict[str, Any]:
        import torch
        from torch.utils.data import DataLoader, RandomSampler
        from torchvision import datasets
        from torchvision import transforms as T
        from torchvision.transforms import InterpolationMode

        started = time.perf_counter()
        plan, device = self.plan, self.device
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = False
        torch.manual_seed(0)
        model = self.build(sdpa=False).to(device)
        model.train()
        loss_fn = self.loss_fn()
        pre = model.preprocess
        res = pre.image_size
        transform = T.Compose(
            [
                T.RandomResizedCrop(res, interpolation=InterpolationMode.BICUBIC),
                T.ToTensor(),
                T.Normalize(pre.mean, pre.std),
            ]
        )
        dataset = datasets.ImageFolder(plan["photos"], transform=transform)
        total = plan["batch"] * (plan["warmup_batches"] + plan["timed_batches"])
        sampler = RandomSampler(dataset, num_samples=total, generator=torch.Generator().manual_seed(0))
        cuda = device.type == "cuda"
        loader = DataLoader(
            dataset,
            batch_size=plan["batch"],
            sampler=sampler,
            num_workers=plan["workers"],
            pin_memory=cuda,
            drop_last=True,
        )
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=LR, momentum=0.9, weight_decay=5e-4)
        scaler = torch.amp.GradScaler("cuda") if cuda else None

        def step(batch) -> int:
            images, labels = batch
            images = images.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                logits = model(images)
                loss = loss_fn(logits.float(), labels)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            loss.item()
            (logits.argmax(dim=1) == labels).sum().item()
            return labels.numel()

        self.memory.reset()
        rate, seen = timed_stream(iter(loader), step, plan["warmup_batches"], plan["timed_batches"], device)
        return self._train_result("reference", rate, seen, time.perf_counter() - started)

    def ours(self, compiled: bool = False) -> dict[str, Any]:
        import torch

        from liftplus.data.input_path import finish_batch, resolve_hand_off, train_input
        from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader

        started = time.perf_counter()
        plan, device = self.plan, self.device
        model, loss_fn = self.our_model()
        pre = model.preprocess
        hand_off = resolve_hand_off(plan["input"], device)
        transform = train_input(
            hand_off, pre.image_size, pre.mean, pre.std, epochs=EPOCHS, mda=True, resize=plan["resize"]
        )
        dataset = ShardIndex(plan["shards"], transform, num_classes=plan["num_classes"], seed=0)
        batches = plan["warmup_batches"] + plan["timed_batches"]
        sampler = EpochBatchSampler(
            len(dataset), plan["batch"], shuffle=True, seed=0, subset=self.stream_indices(plan["batch"], batches)
        )
        sampler.set_epoch(0)
        loader = make_loader(
            dataset, sampler, plan["workers"], pin_memory=device.type == "cuda", prefetch=4, persistent=True
        )
        step_model = torch.compile(model) if compiled else model
        core = self.our_step(step_model, loss_fn)

        def step(batch) -> int:
            images, labels = batch
            images = finish_batch(dataset.transform, images, device)
            labels = labels.to(device, non_blocking=True)
            return core(images, labels)

        self.memory.reset()
        rate, seen = timed_stream(iter(loader), step, plan["warmup_batches"], plan["timed_batches"], device)
        result = self._train_result("ours_compiled" if compiled else "ours", rate, seen, time.perf_counter() - started)
        result["hand_off"] = hand_off
        return result

    def model_only(self, compiled: bool = False) -> dict[str, Any]:
        import torch

        started = time.perf_counter()
        plan, device = self.plan, self.device
        model, loss_fn = self.our_model()
        res = model.preprocess.image_size
        generator = torch.Generator().manual_seed(0)
        images = torch.randn(plan["batch"], 3, res, res, generator=generator).to(device)
        labels = torch.randint(0, PHOTO_CLASSES, (plan["batch"],), generator=generator).to(device)
        core = self.our_step(torch.compile(model) if compiled else model, loss_fn)

        def same_batch() -> Iterator:
            while True:
                yield images, labels

        self.memory.reset()
        rate, seen = timed_stream(
            same_batch(), lambda b: core(*b), plan["warmup_batches"], plan["timed_batches"], device
        )
        return self._train_result(
            "model_only_compiled" if compiled else "model_only", rate, seen, time.perf_counter() - started
        )

    def ours_compiled(self) -> dict[str, Any]:
        return self.ours(compiled=True)

    def model_only_compiled(self) -> dict[str, Any]:
        return self.model_only(compiled=True)

    def eval(self) -> dict[str, Any]:
        """``predict_logits``' loop (``liftplus.inference.run_inference``), without and with TTE."""
        import torch

        from liftplus.data.input_path import eval_input, finish_batch, resolve_hand_off
        from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
        from liftplus.inference import forward_crops
        from liftplus.runtime import autocast_dtype

        started = time.perf_counter()
        plan, device = self.plan, self.device
        model = self.build(sdpa=True).to(device)
        model.eval()
        pre = model.preprocess
        res = pre.image_size
        hand_off = resolve_hand_off(plan["input"], device)
        amp_dtype = autocast_dtype("auto", device)
        batches = plan["eval_warmup_batches"] + plan["eval_timed_batches"]
        result: dict[str, Any] = {"hand_off": hand_off}
        for tte in (False, True):
            pass_started = time.perf_counter()
            transform = eval_input(hand_off, res, pre.mean, pre.std, tte=tte)  # expand: evaluate's default
            dataset = ShardIndex(plan["shards"], transform, num_classes=plan["num_classes"])
            sampler = EpochBatchSampler(
                len(dataset), plan["eval_batch"], shuffle=False, subset=self.stream_indices(plan["eval_batch"], batches)
            )
            loader = make_loader(dataset, sampler, plan["workers"], pin_memory=device.type == "cuda", prefetch=4)

            @torch.inference_mode()
            def step(batch) -> int:
                images, labels = batch
                forward_crops(model, finish_batch(dataset.transform, images, device), amp_dtype).cpu()
                return labels.numel()

            self.memory.reset()
            rate, seen = timed_stream(
                iter(loader), step, plan["eval_warmup_batches"], plan["eval_timed_batches"], device
            )
            del loader
            name = "eval_tte" if tte else "eval"
            peak = self.memory.peak_gib()
            _log(
                f"{name}: {rate:.1f} images/s over {seen} images, peak memory {peak:.2f} GiB "
                f"({time.perf_counter() - pass_started:.0f} s)"
            )
            result[f"{name}_rate"], result[f"{name}_peak_gib"], result[f"{name}_timed_images"] = rate, peak, seen
        result["seconds"] = time.perf_counter() - started
        return result


ARMS = ("reference", "ours", "model_only", "eval")
COMPILED_ARMS = ("ours_compiled", "model_only_compiled")


def device_info(device) -> dict[str, Any]:
    import open_clip
    import torch
    import torchvision

    info = {
        "torch_version": torch.__version__,
        "torchvision_version": torchvision.__version__,
        "open_clip_version": getattr(open_clip, "__version__", "unknown"),
        "python_version": sys.version.split()[0],
    }
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    return info


def arm_process(plan_path: Path, names: list[str]) -> None:
    """In an arm process: run ``names`` in order and report each one's figures on stdout."""
    plan = json.loads(plan_path.read_text())
    arms = Arms(plan)
    report({"arm": "info", **device_info(arms.device)})
    for name in names:
        _log(f"arm {name} ({plan['device']}) ...")
        report({"arm": name, **getattr(arms, name)()})


# --------------------------------------------------------------------------- parent


def run_arms(plan_path: Path, names: list[str], timeout: float) -> tuple[dict[str, dict], Optional[str]]:
    """``names`` in one fresh process; (each finished arm's figures, the error if it failed)."""
    cmd = [sys.executable]
    if "importtime" in sys._xoptions:
        cmd += ["-X", "importtime"]
    cmd += ["-m", "bench.gpu", "--arm-plan", str(plan_path), "--arms", ",".join(names)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=offline_env(), stdout=subprocess.PIPE, text=True, start_new_session=True)
    error = None
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        error = f"timed out after {timeout:.0f} s"
    results: dict[str, dict] = {}
    for line in out.splitlines():
        if line.startswith(RESULT_PREFIX):
            figures = json.loads(line[len(RESULT_PREFIX) :])
            results[figures.pop("arm")] = figures
        elif line.strip():
            print(line, file=sys.stderr)
    if error is None and proc.returncode != 0:
        error = f"exited {proc.returncode} (its traceback is above)"
    return results, error


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--images", type=int, help="synthetic photos to write (GPU default 4000; smoke 16)")
    parser.add_argument("--batch", type=int, help="training batch (GPU default 128; smoke 4)")
    parser.add_argument(
        "--eval-batch", type=int, help="evaluation batch (GPU default 256, evaluate.batch_size's; smoke 4)"
    )
    parser.add_argument(
        "--workers", type=int, help="loader workers, every arm (GPU default min(15, CPUs - 1); smoke 2)"
    )
    parser.add_argument(
        "--passes", type=int, help="passes over the photos each arm times, at least (GPU default 3; smoke 1)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        help="warm-up batches, at least (rounded up to whole rounds of the workers; GPU default 10)",
    )
    parser.add_argument("--model", help="open_clip model (GPU default ViT-B-16; smoke liftplus-tiny-vit)")
    parser.add_argument("--num-classes", type=int, help="classifier classes K (default 1000)")
    parser.add_argument(
        "--input",
        choices=("auto", "float", "uint8", "encoded"),
        default="auto",
        help="ours' and eval's hand-off (train.input / evaluate.input; default auto: uint8 on CUDA)",
    )
    parser.add_argument(
        "--resize",
        choices=("pil", "torch"),
        default="pil",
        help="ours' crop resizer (train.resize; torch: the uint8 kernel, about 2x cheaper a sample)",
    )
    parser.add_argument("--compile", action="store_true", help="also time ours and model_only under torch.compile")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="run on the CPU with small sizes even if a GPU is there"
    )
    parser.add_argument("--budget", type=float, help="seconds the whole run may take (GPU default 480, smoke 300)")
    parser.add_argument(
        "--out",
        type=Path,
        help=f"result file (default {RESULTS.relative_to(REPO)}; smoke {SMOKE_RESULTS.relative_to(REPO)})",
    )
    parser.add_argument("--workdir", type=Path, help="keep photos and shards here (and reuse them); default a temp dir")
    parser.add_argument("--arm-plan", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--arms", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def settings(args: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    defaults = dict(GPU_DEFAULTS if cuda else SMOKE_DEFAULTS)
    if cuda:
        defaults["workers"] = max(1, min(15, (os.cpu_count() or 2) - 1))
    chosen = {
        key: getattr(args, key) if getattr(args, key, None) is not None else value for key, value in defaults.items()
    }
    for key in ("images", "batch", "eval_batch", "passes", "num_classes"):
        if chosen[key] < 1:
            raise SystemExit(f"--{key.replace('_', '-')} must be at least 1")
    if chosen["workers"] < 0 or chosen["warmup"] < 0:
        raise SystemExit("--workers and --warmup must not be negative")
    if chosen["num_classes"] < PHOTO_CLASSES:
        raise SystemExit(f"--num-classes must be at least {PHOTO_CLASSES} (the photos' classes)")
    return chosen


def plan_counts(s: dict[str, Any]) -> dict[str, int]:
    """Warm-up and timed batches per arm: at least ``warmup`` and ``passes`` passes, whole rounds of the workers."""
    w = max(1, s["workers"])
    return {
        "warmup_batches": round_up(max(s["warmup"], w), w),
        "timed_batches": round_up(math.ceil(s["passes"] * s["images"] / s["batch"]), w),
        "eval_warmup_batches": round_up(max(s["warmup"], w), w),
        "eval_timed_batches": round_up(math.ceil(s["passes"] * s["images"] / s["eval_batch"]), w),
    }


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.arm_plan is not None:
        arm_process(args.arm_plan, args.arms.split(","))
        return 0

    run_started = time.perf_counter()
    cuda = not args.cpu_smoke and _cuda_available()
    if not cuda:
        print(SMOKE_NOTE + ("" if args.cpu_smoke else " (CUDA is not available)"), flush=True)
    s = settings(args, cuda)
    deadline = run_started + s["budget"]
    out = args.out or (RESULTS if cuda else SMOKE_RESULTS)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="liftplus-bench-gpu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        photos = photo_folder(workdir / f"photos-{s['images']}", s["images"], processes=max(1, s["workers"]))
        photo_seconds = time.perf_counter() - started
        print(f"photos: {s['images']} synthetic 500x375 JPEGs in {photo_seconds:.1f} s", flush=True)
        started = time.perf_counter()
        shards, class_counts = shard_photos(photos, workdir / f"shards-{s['images']}-{MAX_SHORT_SIDE}")
        shard_seconds = time.perf_counter() - started
        print(f"shards: {len(shards)} shard(s), short side {MAX_SHORT_SIDE}, in {shard_seconds:.1f} s", flush=True)

        counts = plan_counts(s)
        plan = {
            **s,
            **counts,
            "device": "cuda" if cuda else "cpu",
            "input": args.input,
            "resize": args.resize,
            "photos": str(photos),
            "shards": shards,
            "class_counts": class_counts,
        }
        plan_path = workdir / "plan.json"
        plan_path.write_text(json.dumps(plan, indent=1))
        print(
            f"{s['model']}, batch {s['batch']} (eval {s['eval_batch']}), {s['workers']} workers: "
            f"{counts['warmup_batches']} warm-up + {counts['timed_batches']} timed batches per training arm, "
            f"{counts['eval_warmup_batches']} + {counts['eval_timed_batches']} per evaluation pass",
            flush=True,
        )

        # On the GPU each arm gets its own process (its own CUDA context, allocator peak and
        # determinism settings, no workers left over); the smoke run shares one to save imports.
        arms = list(ARMS) + (list(COMPILED_ARMS) if args.compile else [])
        groups = [[name] for name in arms] if cuda else [arms]
        results: dict[str, dict] = {}
        errors: dict[str, str] = {}
        for names in groups:
            left = deadline - time.perf_counter()
            if cuda and names[0] in COMPILED_ARMS and left < OPTIONAL_ARM_SECONDS:
                errors[names[0]] = f"skipped: {left:.0f} s of the budget left"
                print(f"{names[0]}: {errors[names[0]]}", flush=True)
                continue
            got, error = run_arms(plan_path, names, timeout=max(30.0, left))
            results.update(got)
            if error is not None:
                for name in names:
                    if name not in got:
                        errors[name] = error
                print(f"arms {','.join(names)}: {error}", file=sys.stderr, flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    figures = assemble(s, plan, results, errors, cuda, photo_seconds, shard_seconds, time.perf_counter() - run_started)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    print_table(figures)
    print(f"wrote {out}", flush=True)
    missing = [key for key in REQUIRED if key not in figures]
    if missing:
        print(f"missing figures: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def assemble(s, plan, results, errors, cuda, photo_seconds, shard_seconds, seconds) -> dict[str, Any]:
    info = results.get("info", {})
    figures: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_smoke": not cuda,
        "gpu_name": info.get("gpu_name", "none (CPU smoke run)") if cuda else "none (CPU smoke run)",
    }
    if not cuda:
        figures["note"] = SMOKE_NOTE
    for key in (
        "torch_version",
        "torchvision_version",
        "open_clip_version",
        "python_version",
        "cuda_version",
        "gpu_memory_gib",
    ):
        if key in info:
            figures[key] = info[key]
    figures.update(
        {
            "device": "cuda" if cuda else "cpu",
            "cpu_count": os.cpu_count(),
            "model": s["model"],
            "num_classes": s["num_classes"],
            "images": s["images"],
            "batch": s["batch"],
            "eval_batch": s["eval_batch"],
            "workers": s["workers"],
            "passes": s["passes"],
            "warmup_batches": plan["warmup_batches"],
            "timed_batches": plan["timed_batches"],
            "eval_warmup_batches": plan["eval_warmup_batches"],
            "eval_timed_batches": plan["eval_timed_batches"],
            "input": plan["input"],
            "resize": plan["resize"],
            "hand_off": results.get("ours", {}).get("hand_off", "?"),
            "peak_memory": "torch.cuda.max_memory_allocated" if cuda else "process peak resident memory (VmHWM)",
        }
    )
    arm_keys = {
        "reference": "reference",
        "ours": "train",
        "model_only": "model_only",
        "ours_compiled": "train_compiled",
        "model_only_compiled": "model_only_compiled",
    }
    for arm, key in arm_keys.items():
        if arm in results:
            figures[f"gpu_{key}_images_per_second"] = results[arm]["rate"]
            figures[f"gpu_{key}_peak_memory_gib"] = results[arm]["peak_gib"]
            figures[f"gpu_{key}_seconds"] = results[arm]["seconds"]
    if "eval" in results:
        for name in ("eval", "eval_tte"):
            figures[f"gpu_{name}_images_per_second"] = results["eval"][f"{name}_rate"]
            figures[f"gpu_{name}_peak_memory_gib"] = results["eval"][f"{name}_peak_gib"]
        figures["gpu_eval_seconds"] = results["eval"]["seconds"]
    if "ours" in results and "reference" in results:
        figures["gpu_train_speedup"] = results["ours"]["rate"] / results["reference"]["rate"]
    if "ours" in results and "model_only" in results:
        figures["gpu_loader_share"] = results["ours"]["rate"] / results["model_only"]["rate"]
    if "ours_compiled" in results and "model_only_compiled" in results:
        figures["gpu_loader_share_compiled"] = results["ours_compiled"]["rate"] / results["model_only_compiled"]["rate"]
    figures["photo_seconds"] = photo_seconds
    figures["shard_seconds"] = shard_seconds
    figures["seconds"] = seconds
    if errors:
        figures["errors"] = errors
    return figures


def print_table(figures: dict[str, Any]) -> None:
    header = "CPU smoke run (not GPU figures)" if figures["cpu_smoke"] else figures["gpu_name"]
    print(
        f"\n{header}: {figures['model']}, batch {figures['batch']}, {figures['workers']} workers, "
        f"torch {figures.get('torch_version', '?')}"
    )
    for key, value in figures.items():
        if key.startswith("gpu_") and isinstance(value, float):
            print(f"  {key:45s} {value:12.3f}")
    for arm, error in figures.get("errors", {}).items():
        print(f"  {arm}: {error}")


if __name__ == "__main__":
    sys.exit(main())
