"""Image transforms of LIFT+: minimalist data augmentation (MDA), test crops, TTE.

Inputs are PIL images (any mode; converted to RGB, so grayscale becomes 3-channel).
Every random transform takes an optional ``torch.Generator``: with one seeded per
sample the augmentation does not depend on worker count or order; without one it
draws from torch's global RNG in the same order as the reference (and torchvision).

Each transform has a ``uint8=True`` form for the fast path: workers crop and resize
and hand over uint8 tensors, and :func:`normalize_batch` finishes on the device.
The train crop's resize is PIL's, as the reference's (``resize="pil"``), or
torch's uint8 kernel (``resize="torch"``, :func:`resized_crop_uint8`).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from liftplus.errors import ParamsError

BICUBIC = InterpolationMode.BICUBIC
MDA_SCHEDULES = ("min", "max", "linear", "convex", "concave")
RESIZES = ("pil", "torch")
Box = tuple[int, int, int, int]
"""(top, left, height, width) of a crop, as torchvision's ``crop`` takes it."""


def mda_min_scale(
    epoch: int, epochs: int, schedule: str = "convex", scale: Sequence[float] = (0.08, 1.0)
) -> float:
    """Smallest crop-area fraction MDA allows at ``epoch`` (0-based) of ``epochs``.

    ``t = epoch / (epochs - 1)`` (0 for a single epoch, where the reference divides by
    zero) is mapped to ``s`` in [0, 1] by the schedule, then to ``scale[0] + s * (scale[1] - scale[0])``.
    """
    if schedule not in MDA_SCHEDULES:
        expected = ", ".join(MDA_SCHEDULES)
        raise ParamsError(f"train.mda_schedule is {schedule!r}, expected one of {expected}")
    if not 0 <= epoch < max(epochs, 1):
        raise ValueError(f"epoch {epoch} is outside 0..{epochs - 1}")
    t = epoch / (epochs - 1) if epochs > 1 else 0.0
    s = {
        "min": 0.0,
        "max": 1.0,
        "linear": t,
        "convex": 1 - math.sqrt(1 - t**2),
        "concave": math.sqrt(1 - (1 - t) ** 2),
    }[schedule]
    return scale[0] + s * (scale[1] - scale[0])


def sample_mda_box(
    height: int,
    width: int,
    min_scale: float,
    max_scale: float = 1.0,
    generator: Optional[torch.Generator] = None,
) -> Box:
    """A random square box whose area fraction is uniform in [min_scale, max_scale].

    Both bounds are capped at ``short_side**2 / area`` so the square fits: with
    ``min_scale == 1`` the box is the largest square. The draws (one uniform, two
    randint) are the reference's, in its order.
    """
    area = height * width
    fits = min(height, width) ** 2 / area
    lo, hi = min(min_scale, fits), min(max_scale, fits)
    target_area = area * torch.empty(1).uniform_(lo, hi, generator=generator).item()
    side = int(round(math.sqrt(target_area)))
    i = torch.randint(0, height - side + 1, size=(1,), generator=generator).item()
    j = torch.randint(0, width - side + 1, size=(1,), generator=generator).item()
    return i, j, side, side


def sample_rrc_box(
    height: int,
    width: int,
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Box:
    """torchvision's ``RandomResizedCrop.get_params``, draw for draw, with a generator."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = torch.randint(0, height - h + 1, size=(1,), generator=generator).item()
            j = torch.randint(0, width - w + 1, size=(1,), generator=generator).item()
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def five_crop_boxes(height: int, width: int, res: int) -> list[Box]:
    """Boxes of torchvision's ``FiveCrop(res)`` on a ``height x width`` image: tl, tr, bl, br, centre."""
    bottom, right = height - res, width - res
    centre = (int(round(bottom / 2.0)), int(round(right / 2.0)))
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), centre]
    return [(top, left, res, res) for top, left in corners]


def to_rgb(img: Image.Image) -> Image.Image:
    return img if img.mode == "RGB" else img.convert("RGB")


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """Contiguous (3, H, W) uint8 tensor of a PIL image, grayscale replicated to 3 channels.

    Transposed here by numpy (as cheap as ``pil_to_tensor``'s channel-first
    view), so the batch is stacked by plain copies: stacking 32 such views
    transposes each and took 7 ms a batch against 0.5.
    """
    return torch.from_numpy(np.ascontiguousarray(np.asarray(to_rgb(img)).transpose(2, 0, 1)))


def normalize_batch(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Float images from uint8 ones (``(..., C, H, W)``), as ``ToTensor`` then ``Normalize`` compute them.

    ``x * (1 / (255 std)) - mean / std`` in place on one new float tensor: equal
    to ``(x / 255 - mean) / std`` to float rounding (< 1e-6), and several times
    faster on the CPU than that four-pass form or a type-promoting ``addcmul``.
    ``out``, a float tensor of the same shape, receives the result instead of a new one.
    """
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(-1, 1, 1)
    floats = images.to(torch.float32) if out is None else out.copy_(images)
    return floats.mul_(1.0 / (255.0 * std_t)).sub_(mean_t / std_t)


class MinimalistRandomResizedCrop(nn.Module):
    """MDA: a random square crop, resized to ``size``, whose smallest area grows each epoch.

    The epoch is set explicitly (``set_epoch``), not stepped, so a resumed run and
    every worker copy agree on it.
    """

    def __init__(
        self,
        size: int,
        epochs: int,
        schedule: str = "convex",
        scale: Sequence[float] = (0.08, 1.0),
        interpolation: InterpolationMode = BICUBIC,
        antialias: bool = True,
    ):
        super().__init__()
        self.size = [size, size]
        self.epochs = epochs
        self.schedule = schedule
        self.scale = tuple(scale)
        self.interpolation = interpolation
        self.antialias = antialias
        self.min_scale = mda_min_scale(0, epochs, schedule, self.scale)

    def set_epoch(self, epoch: int) -> None:
        self.min_scale = mda_min_scale(epoch, self.epochs, self.schedule, self.scale)

    def get_params(self, img, generator: Optional[torch.Generator] = None) -> Box:
        _, height, width = TF.get_dimensions(img)
        return self.draw(height, width, generator)[0]

    def draw(self, height: int, width: int, generator: Optional[torch.Generator] = None) -> tuple[Box, bool]:
        """The crop box (and whether to flip: never) for a ``height x width`` image."""
        return sample_mda_box(height, width, self.min_scale, self.scale[1], generator), False

    def forward(self, img, generator: Optional[torch.Generator] = None):
        i, j, h, w = self.get_params(img, generator)
        return TF.resized_crop(img, i, j, h, w, self.size, self.interpolation, antialias=self.antialias)

    def extra_repr(self) -> str:
        return f"size={self.size[0]}, epochs={self.epochs}, schedule={self.schedule}, min_scale={self.min_scale:.4f}"


class RandomResizedCropFlip(nn.Module):
    """The standard augmentation (``RandomResizedCrop`` + ``RandomHorizontalFlip``), generator-aware.

    Without a generator it draws exactly as the torchvision pair does.
    """

    def __init__(self, size: int, interpolation: InterpolationMode = BICUBIC):
        super().__init__()
        self.size = [size, size]
        self.interpolation = interpolation

    def set_epoch(self, epoch: int) -> None:
        """No schedule: present so every train crop has the same interface."""

    def draw(self, height: int, width: int, generator: Optional[torch.Generator] = None) -> tuple[Box, bool]:
        """The crop box and the flip for a ``height x width`` image, drawn in torchvision's order."""
        box = sample_rrc_box(height, width, generator=generator)
        return box, bool(torch.rand(1, generator=generator) < 0.5)

    def forward(self, img, generator: Optional[torch.Generator] = None):
        _, height, width = TF.get_dimensions(img)
        (i, j, h, w), flip = self.draw(height, width, generator)
        img = TF.resized_crop(img, i, j, h, w, self.size, self.interpolation, antialias=True)
        return TF.hflip(img) if flip else img


def _finish(mean: Sequence[float], std: Sequence[float], uint8: bool) -> Callable:
    """The last step of every transform: a normalised float tensor, or uint8 for the device to normalise."""
    return to_uint8_tensor if uint8 else T.Compose([T.ToTensor(), T.Normalize(mean, std)])


def resized_crop_uint8(img: Image.Image, box: Box, size: int, flip: bool = False) -> torch.Tensor:
    """A box of an RGB image as a contiguous (3, size, size) uint8 tensor, resized by torch.

    ``F.interpolate`` on uint8 channels-last input runs torch's AVX2 bicubic
    antialiased kernel (Pillow-SIMD's algorithm): on one core 0.55 ms a sample
    against 1.15 for PIL's resize and the tensor conversion after it. Its
    fixed-point rounding is not Pillow's: about 0.4 % of the pixels differ from
    PIL's by one grey level (measured on 500x375 photos at short side 256).
    """
    top, left, height, width = box
    pixels = TF.pil_to_tensor(img)[:, top : top + height, left : left + width]
    resized = F.interpolate(pixels.unsqueeze(0), size=(size, size), mode="bicubic", antialias=True)[0]
    return (resized.flip(-1) if flip else resized).contiguous()


class TrainTransform:
    """RGB → train crop (MDA or standard) → tensor; call as ``transform(img, generator=None)``.

    With ``resize="torch"`` the crop's box (and flip) is drawn as before and
    :func:`resized_crop_uint8` cuts and resizes it: a uint8 tensor, ``finish`` unused.
    """

    def __init__(self, crop: nn.Module, finish: Callable, resize: str = "pil"):
        self.crop = crop
        self.finish = finish
        self.resize = resize

    def set_epoch(self, epoch: int) -> None:
        self.crop.set_epoch(epoch)

    def __call__(self, img: Image.Image, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        img = to_rgb(img)
        if self.resize == "torch":
            box, flip = self.crop.draw(img.height, img.width, generator)
            return resized_crop_uint8(img, box, self.crop.size[0], flip)
        return self.finish(self.crop(img, generator))

    def __repr__(self) -> str:
        return f"TrainTransform({self.crop!r}, {self.finish!r}, resize={self.resize})"


def train_transform(
    res: int,
    mean: Sequence[float],
    std: Sequence[float],
    epochs: int,
    mda: bool = True,
    schedule: str = "convex",
    uint8: bool = False,
    resize: str = "pil",
) -> TrainTransform:
    """The reference's training transform: MDA (bicubic, no flip), or RandomResizedCrop + flip.

    ``resize="torch"`` (uint8 output only) resizes the crop with torch instead of PIL.
    """
    if resize not in RESIZES:
        raise ParamsError(f"train.resize is {resize!r}, expected one of {', '.join(RESIZES)}")
    if resize == "torch" and not uint8:
        raise ValueError("resize='torch' makes uint8 crops: use it with uint8=True")
    crop = MinimalistRandomResizedCrop(res, epochs, schedule) if mda else RandomResizedCropFlip(res)
    return TrainTransform(crop, _finish(mean, std, uint8), resize)


REFERENCE_TTE_EXPAND = 24
"""Pixels the reference adds to the short side before TTE's five crops (its default at every resolution)."""
REFERENCE_TTE_RES = 224
"""The resolution :data:`REFERENCE_TTE_EXPAND` was chosen for (CLIP ViT-B/16)."""


def eval_resize(res: int, tte: bool, expand: Optional[int] = None) -> int:
    """The short side a test image is resized to before its ``res`` crop(s): ``res + expand``.

    The one rule for evaluation, ``predict`` and the benches (``evaluate.tte_expand``).
    ``expand`` None takes the reference's share of the resolution: with TTE
    ``round(24 * res / 224)`` (the reference's 24 at 224 px: 248; 3 at the demo's 32 px: 35),
    without TTE ``res // 7`` (the reference's own default: 256 at 224 px, 36 at 32 px).
    A number is used as given in both modes, as the reference's ``expand``.

    The reference adds 24 at every resolution with TTE: at 384 px it resizes to 408,
    where this rule gives 425 (expand 41). A preset for a 384-px backbone that is to
    reproduce the reference sets ``evaluate.tte_expand: 24``.
    """
    if res < 1:
        raise ValueError(f"res is {res}, expected at least 1")
    if expand is None:
        expand = round(REFERENCE_TTE_EXPAND * res / REFERENCE_TTE_RES) if tte else res // 7
    elif expand < 0:
        raise ValueError(f"expand is {expand}, expected at least 0")
    return res + expand


def test_transform(
    res: int, mean: Sequence[float], std: Sequence[float], uint8: bool = False, expand: Optional[int] = None
) -> T.Compose:
    """Resize the short side to ``eval_resize(res, False, expand)`` (``res + res // 7`` by default; bicubic),
    centre crop ``res``."""
    return T.Compose([
        to_rgb, T.Resize(eval_resize(res, False, expand), interpolation=BICUBIC), T.CenterCrop(res),
        _finish(mean, std, uint8),
    ])


class StackCrops:
    """Apply ``finish`` to each crop of a tuple and stack them: ``(n_crops, C, H, W)``."""

    def __init__(self, finish: Callable):
        self.finish = finish

    def __call__(self, crops) -> torch.Tensor:
        return torch.stack([self.finish(crop) for crop in crops])


def tte_transform(
    res: int, mean: Sequence[float], std: Sequence[float], expand: Optional[int] = None, uint8: bool = False
) -> T.Compose:
    """Test-time ensembling input: short side to ``eval_resize(res, True, expand)`` (bicubic; 248 at
    224 px by default), the five ``res`` crops, stacked."""
    return T.Compose([
        to_rgb, T.Resize(eval_resize(res, True, expand), interpolation=BICUBIC), T.FiveCrop(res),
        StackCrops(_finish(mean, std, uint8)),
    ])
