"""The arms, run in an arm process: each builds its model and input stream and times it.

See :mod:`bench.gpu` for what each arm is; :mod:`bench.gpu.runner` runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.gpu.measure import PeakMemory, log, timed_stream
from bench.photos import PHOTO_CLASSES

LR = 0.02
"""lift+'s default learning rate."""
EPOCHS = 5
"""lift+'s default epochs: what the MDA schedule is built for (the bench reads epoch 0's crops)."""


class Arms:
    """The arms of one plan, run in this process; each returns its figures."""

    def __init__(self, plan: dict[str, Any]):
        import torch

        self.plan = plan
        self.device = torch.device(plan["device"])
        self.memory = PeakMemory(self.device)

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
        from liftplus.training.losses import LogitAdjustedLoss

        counts = list(self.plan["class_counts"])
        counts += [1] * (self.plan["num_classes"] - len(counts))
        return LogitAdjustedLoss(counts).to(self.device)

    def stream_indices(self, batch: int, batches: int) -> list[int]:
        """Dataset indices for ``batches`` full batches: the photos over and over (the sampler shuffles them)."""
        n = sum(self.plan["class_counts"])  # the train shards' samples (the flat folder's test hold-out is not in them)
        return [i % n for i in range(batch * batches)]

    def our_step(self, model, loss_fn) -> Callable:
        """``fit``'s step for one micro-batch, by construction: ``liftplus.training.step.train_step``
        (accumulation 1, ``precision: auto``: fp16 autocast and fit's GradScaler on CUDA), then the
        loss and accuracy reads fit makes."""
        import torch

        from liftplus.runtime import autocast_dtype, grad_scaler
        from liftplus.training.step import train_step

        device = self.device
        amp_dtype = autocast_dtype("auto", device)
        scaler = grad_scaler(amp_dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(
            params, lr=LR, momentum=0.9, weight_decay=5e-4, fused=True if device.type == "cuda" else None
        )

        def step(images, labels) -> int:
            loss, logits = train_step(model, loss_fn, images, labels, optimizer, scaler=scaler, amp_dtype=amp_dtype)
            n = labels.numel()
            loss.item()
            (logits.argmax(dim=1) == labels).sum().item()
            return n

        return step

    def _train_result(self, name: str, rate: float, seen: int, seconds: float) -> dict[str, Any]:
        peak = self.memory.peak_gib()
        log(f"{name}: {rate:.1f} images/s over {seen} images, peak memory {peak:.2f} GiB ({seconds:.0f} s)")
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
        """``predict_logits``' loop (``liftplus.evaluation.inference.run_inference``), without and with TTE."""
        import torch

        from liftplus.data.input_path import eval_input, finish_batch, resolve_hand_off
        from liftplus.data.loader import EpochBatchSampler, ShardIndex, make_loader
        from liftplus.evaluation.inference import forward_crops, ready_for_test
        from liftplus.runtime import autocast_dtype

        started = time.perf_counter()
        plan, device = self.plan, self.device
        model = self.build(sdpa=True)
        amp_dtype = autocast_dtype(ready_for_test(model, device, "auto"), device)  # as predict_logits
        pre = model.preprocess
        res = pre.image_size
        hand_off = resolve_hand_off(plan["input"], device)
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
            log(
                f"{name}: {rate:.1f} images/s over {seen} images, peak memory {peak:.2f} GiB "
                f"({time.perf_counter() - pass_started:.0f} s)"
            )
            result[f"{name}_rate"], result[f"{name}_peak_gib"], result[f"{name}_timed_images"] = rate, peak, seen
        result["seconds"] = time.perf_counter() - started
        return result


ARMS = ("reference", "ours", "model_only", "eval")
COMPILED_ARMS = ("ours_compiled", "model_only_compiled")
