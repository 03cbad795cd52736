"""Where the input pipeline ends: in the loader's workers or on the training device.

``train.input`` / ``evaluate.input`` pick what the workers hand to the main process:

* ``float``: normalised float batches: each worker crops to uint8 and
  normalises the whole batch at once (:func:`normalize_batch`, equal to the
  reference's per-image ``ToTensor`` + ``Normalize`` to 1e-6, at a fraction of
  its cost), into shared memory the main process reads as it is. What ``auto``
  means without a GPU: the main process, busy with the model, gets batches ready.
* ``uint8``: the same crops as uint8, a quarter of the bytes to copy and pin;
  the device normalises the batch (:func:`normalize_batch`, equal to the float
  path to 1e-6). What ``auto`` means on CUDA: on an H200 with 15 workers it fed
  2,526 images/s from short-side-256 shards, 2x the reference loader, as fast
  as decoding on the GPU (2,586) while leaving the GPU to the model (DESIGN,
  "Measured facts").
* ``encoded``: a JPEG's bytes as they lie in the shard, with the crop box (and
  flip) the worker drew from the sample's own generator, so the boxes are the
  CPU path's; the device decodes the batch (``torchvision.io.decode_jpeg``:
  nvjpeg on CUDA), crops, resizes (bicubic, antialiased) and normalises. For
  hosts with few CPU cores per GPU. PNG and ``.npy`` samples are decoded in the
  worker and handed over whole, as uint8.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import default_collate, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import functional as TF

from liftplus.data.buffers import ReusedBuffers
from liftplus.data.images import open_image
from liftplus.errors import DataError
from liftplus.data.images import resize_shape
from liftplus.data.transforms import (
    BICUBIC,
    Box,
    eval_resize,
    five_crop_boxes,
    normalize_batch,
    test_transform,
    to_rgb,
    to_uint8_tensor,
    train_transform,
    tte_transform,
)

HAND_OFFS = ("float", "uint8", "encoded")
JPEG_EXTS = ("jpg", "jpeg")


def resolve_hand_off(name: str, device: torch.device) -> str:
    """``auto`` → ``uint8`` on CUDA, ``float`` elsewhere; any other name as given."""
    if name == "auto":
        return "uint8" if device.type == "cuda" else "float"
    if name not in HAND_OFFS:
        raise ValueError(f"input {name!r} is not one of auto, {', '.join(HAND_OFFS)}")
    return name


@dataclass
class EncodedBatch:
    """What ``encoded`` workers hand over: per sample a JPEG byte string or a decoded uint8 image."""

    payloads: list[torch.Tensor]
    is_jpeg: list[bool]
    boxes: Optional[torch.Tensor]
    """(B, 4) top, left, height, width of the train crops; None for evaluation."""
    flips: Optional[torch.Tensor]

    def pin_memory(self) -> "EncodedBatch":
        return EncodedBatch([p.pin_memory() for p in self.payloads], self.is_jpeg,
                            None if self.boxes is None else self.boxes.pin_memory(),
                            None if self.flips is None else self.flips.pin_memory())

    def __len__(self) -> int:
        return len(self.payloads)


def decode_on_device(batch: EncodedBatch, device: torch.device) -> list[torch.Tensor]:
    """(3, H, W) uint8 images on ``device``: the JPEGs decoded there as one batch, the rest copied."""
    images: list[Optional[torch.Tensor]] = [None] * len(batch)
    jpeg_at = [i for i, is_jpeg in enumerate(batch.is_jpeg) if is_jpeg]
    if jpeg_at:
        try:
            decoded = decode_jpeg([batch.payloads[i] for i in jpeg_at], mode=ImageReadMode.RGB, device=device)
        except RuntimeError as exc:
            reason = str(exc).splitlines()[0].rpartition(", ")[2]  # torchvision prefixes its source file
            raise DataError(
                f"a JPEG of this batch does not decode on {device} ({reason}); "
                "run the validate stage, or set input: uint8 to decode in the workers"
            ) from None
        for i, image in zip(jpeg_at, decoded):
            images[i] = image
    for i, image in enumerate(images):
        if image is None:
            images[i] = batch.payloads[i].to(device, non_blocking=True)
    return images


def resized_crop_u8(image: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    """A box of a (3, H, W) uint8 image resized to ``size`` square, bicubic with antialiasing."""
    top, left, height, width = box
    return TF.resized_crop(image, top, left, height, width, [size, size], BICUBIC, antialias=True)


def resize_short_u8(image: torch.Tensor, short_side: int) -> torch.Tensor:
    """``Resize(short_side)`` (bicubic, antialiased) of a (3, H, W) uint8 image."""
    height, width = resize_shape(image.shape[-2], image.shape[-1], short_side)
    return TF.resize(image, [height, width], BICUBIC, antialias=True)


def finish_batch(transform: Any, images: Any, device: torch.device) -> torch.Tensor:
    """A loader batch as the model's input on ``device`` (plain transforms: just the copy)."""
    finish = getattr(transform, "finish_batch", None)
    return finish(images, device) if finish is not None else images.to(device, non_blocking=True)


class WorkerInput:
    """What a ``ShardIndex`` runs per sample in a worker and what finishes the batch on the device.

    ``random`` transforms take the sample's generator (and ``set_epoch``);
    ``takes_encoded`` ones get the stored bytes instead of a decoded image.
    """

    random = False
    takes_encoded = False
    collate: Callable = staticmethod(default_collate)

    def set_epoch(self, epoch: int) -> None:
        pass

    def finish_batch(self, images: Any, device: torch.device) -> torch.Tensor:
        return images.to(device, non_blocking=True)


def collate_normalized(items: list, mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of uint8 crops normalised where it is collated (a worker: into shared memory)."""
    images, labels = default_collate(items)
    out = None
    if get_worker_info() is not None:  # as default_collate does: the main process maps it, no copy
        storage = torch.empty(0)._typed_storage()._new_shared(images.numel())
        out = torch.empty(0).set_(storage).view(images.shape)
    return normalize_batch(images, mean, std, out=out), labels


class PixelInput(WorkerInput):
    """``float`` or ``uint8``: the workers crop to uint8; the batch is normalised in the worker
    (``float``) or on the device (``uint8``)."""

    def __init__(self, transform: Callable, random: bool, normalize: tuple, on_device: bool):
        self.transform = transform
        self.random = random
        self.normalize = normalize
        self.on_device = on_device
        self.cpu_buffers = ReusedBuffers()
        if not on_device:
            self.collate = functools.partial(collate_normalized, mean=normalize[0], std=normalize[1])

    def set_epoch(self, epoch: int) -> None:
        if self.random:
            self.transform.set_epoch(epoch)

    def __call__(self, image: Image.Image, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return self.transform(image, generator=generator) if self.random else self.transform(image)

    def finish_batch(self, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The batch on ``device``, normalised there if the workers did not (on the CPU into a reused tensor)."""
        if not self.on_device:
            return images.to(device, non_blocking=True)
        if device.type == "cpu":
            return normalize_batch(images, *self.normalize, out=self.cpu_buffers.get(images.shape))
        return normalize_batch(images.to(device, non_blocking=True), *self.normalize)

    def __repr__(self) -> str:
        return f"PixelInput({self.transform!r}, normalised {'on the device' if self.on_device else 'in the worker'})"


class EncodedInput(WorkerInput):
    """``encoded``: workers read bytes and draw boxes, the device decodes, crops, resizes, normalises.

    ``crop`` is the train transform's crop module (boxes drawn by its ``draw``);
    without one this is the evaluation input: resize the short side to
    ``short_side``, then the centre crop (``tte`` False) or the five crops.
    """

    takes_encoded = True

    def __init__(self, res: int, mean: Sequence[float], std: Sequence[float], crop=None,
                 short_side: Optional[int] = None, tte: bool = False):
        self.res, self.mean, self.std = res, tuple(mean), tuple(std)
        self.crop, self.short_side, self.tte = crop, short_side, tte
        self.random = crop is not None

    def set_epoch(self, epoch: int) -> None:
        if self.crop is not None:
            self.crop.set_epoch(epoch)

    def encoded(self, data: bytes, ext: str, generator: Optional[torch.Generator] = None):
        """The worker's part for one sample: (payload, is_jpeg, box, flip)."""
        if ext in JPEG_EXTS:
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
            payload, is_jpeg = torch.frombuffer(bytearray(data), dtype=torch.uint8), True
        else:
            payload, is_jpeg = to_uint8_tensor(to_rgb(open_image(data, ext))), False
            height, width = payload.shape[-2:]
        box, flip = self.crop.draw(height, width, generator) if self.crop is not None else ((0, 0, 0, 0), False)
        return payload, is_jpeg, box, flip

    @staticmethod
    def collate(items: list) -> tuple[EncodedBatch, torch.Tensor]:
        samples, labels = zip(*items)
        payloads, is_jpeg, boxes, flips = zip(*samples)
        return EncodedBatch(list(payloads), list(is_jpeg), torch.tensor(boxes), torch.tensor(flips)), \
            torch.tensor(labels)

    def finish_batch(self, batch: EncodedBatch, device: torch.device) -> torch.Tensor:
        images = decode_on_device(batch, device)
        if self.crop is not None:
            crops = []
            for image, box, flip in zip(images, batch.boxes.tolist(), batch.flips.tolist()):
                crop = resized_crop_u8(image, tuple(box), self.res)
                crops.append(TF.hflip(crop) if flip else crop)
            return normalize_batch(torch.stack(crops), self.mean, self.std)
        out = []
        for image in images:
            resized = resize_short_u8(image, self.short_side)
            height, width = resized.shape[-2:]
            if self.tte:
                boxes = five_crop_boxes(height, width, self.res)
                out.append(torch.stack([TF.crop(resized, *box) for box in boxes]))
            else:
                out.append(TF.center_crop(resized, [self.res, self.res]))
        return normalize_batch(torch.stack(out), self.mean, self.std)

    def __repr__(self) -> str:
        what = f"crop={self.crop!r}" if self.crop is not None else f"short_side={self.short_side}, tte={self.tte}"
        return f"EncodedInput(res={self.res}, {what})"


def train_input(
    hand_off: str, res: int, mean: Sequence[float], std: Sequence[float], epochs: int,
    mda: bool = True, schedule: str = "convex", resize: str = "pil",
) -> WorkerInput:
    """The training input for ``hand_off`` (resolved, not ``auto``): MDA or RandomResizedCrop + flip.

    ``resize`` (``pil`` | ``torch``) resizes the workers' crops; ``encoded``
    batches are resized on the device by torch whatever it says.
    """
    if hand_off == "encoded":
        return EncodedInput(res, mean, std, crop=train_transform(res, mean, std, epochs, mda, schedule).crop)
    transform = train_transform(res, mean, std, epochs, mda, schedule, uint8=True, resize=resize)
    return PixelInput(transform, random=True, normalize=(tuple(mean), tuple(std)), on_device=hand_off == "uint8")


def eval_input(
    hand_off: str, res: int, mean: Sequence[float], std: Sequence[float], tte: bool = False,
    expand: Optional[int] = None,
) -> WorkerInput:
    """The evaluation input: the short side resized to ``eval_resize(res, tte, expand)``, then the
    centre crop or TTE's five crops (``expand`` None: the reference's, 256 or 248 at 224 px)."""
    if hand_off == "encoded":
        return EncodedInput(res, mean, std, short_side=eval_resize(res, tte, expand), tte=tte)
    transform = (tte_transform(res, mean, std, expand, uint8=True) if tte
                 else test_transform(res, mean, std, uint8=True, expand=expand))
    return PixelInput(transform, random=False, normalize=(tuple(mean), tuple(std)), on_device=hand_off == "uint8")
