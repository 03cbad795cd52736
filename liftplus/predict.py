"""Classify image files with a trained checkpoint: top-k classes and their probabilities.

The model is rebuilt from the checkpoint onto its backbone and sees each image
exactly as evaluation does: turned upright by its EXIF orientation and made
8-bit RGB as the sharding stage stores photos, then the backbone's test
transform (centre crop) or, with TTE, its five crops whose logits are averaged
before the softmax.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from liftplus.data.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, is_image_name, pixel_budget_exceeded, to_eight_bit
from liftplus.data.transforms import test_transform, to_rgb, tte_transform
from liftplus.errors import DataError, OutputError, ParamsError
from liftplus.io import atomic_path, write_json
from liftplus.model.build import LiftModel
from liftplus.model.checkpoint import checkpoint_classnames, model_from_checkpoint
from liftplus.train import Distributed, autocast_dtype, pick_device

TTE_EXPAND = 24
"""Pixels added to the short side before the five TTE crops (params.yaml's evaluate.tte_expand default)."""
OUTPUT_FORMATS = (".csv", ".json")
DEVICES = ("auto", "cuda", "cpu")
CSV_COLUMNS = ("path", "rank", "class", "label", "probability")


@dataclass(frozen=True)
class Prediction:
    label: int
    classname: str
    probability: float


@dataclass(frozen=True)
class ImagePredictions:
    """The top-k predictions of one image, most probable first."""

    path: Path
    predictions: list[Prediction]

    def to_dict(self) -> dict:
        return {
            "path": str(self.path),
            "predictions": [
                {"class": p.classname, "label": p.label, "probability": p.probability} for p in self.predictions
            ],
        }


@dataclass
class Predictor:
    """A model ready for inference, with its class names and input transform."""

    model: LiftModel
    classnames: list[str]
    transform: Callable[[Image.Image], torch.Tensor]
    device: torch.device
    precision: str = "auto"

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``[B, K]`` of transformed images ``[B, C, H, W]``, or of crops
        ``[B, n, C, H, W]`` averaged over the crops (as the reference's TTE)."""
        images = images.to(self.device)
        crops = images.dim() == 5
        if crops:
            batch, n = images.shape[:2]
            images = images.flatten(0, 1)
        amp_dtype = autocast_dtype(self.precision, self.device)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = self.model(images).float()
        if crops:
            out = out.view(batch, n, -1).mean(dim=1)
        return out.cpu()

    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Softmax probabilities ``[B, K]`` of PIL images."""
        return torch.softmax(self.logits(torch.stack([self.transform(img) for img in images])), dim=1)


def load_predictor(checkpoint: str | Path, tte: bool = False, device: str = "auto") -> Predictor:
    """The model of ``checkpoint`` in eval mode on ``device``, with the backbone's test (or TTE) transform."""
    target = inference_device(device)
    model, config, ckpt = model_from_checkpoint(checkpoint)
    classnames = checkpoint_classnames(ckpt.get("extra") or {}, config.num_classes, checkpoint)
    pre = model.preprocess
    if tte:
        transform = tte_transform(pre.image_size, pre.mean, pre.std, expand=TTE_EXPAND)
    else:
        transform = test_transform(pre.image_size, pre.mean, pre.std)
    model.to(target).eval()
    return Predictor(model, classnames, transform, target)


def inference_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ParamsError(f"--device is '{name}', expected one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ParamsError("--device is 'cuda' but no CUDA device is available")
    return pick_device(name, Distributed())


def is_image_file(path: Path) -> bool:
    return is_image_name(path.name) and not path.name.startswith(".")


def collect_images(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; for a folder, its image files (recursively, hidden ones skipped), sorted."""
    images: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*")
                if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(f"{path}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise DataError(f"{path}: no such image or folder")
    return images


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An upright 8-bit RGB image; any mode PIL reads (L, RGBA, P, CMYK, 16-bit) is converted.

    An image of more than ``max_pixels`` pixels is refused from its header, before its
    pixels are decoded (a small file can hold a decompression bomb).
    """
    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: the budget below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit, whatever --max-pixels says
        raise DataError(f"{path}: too large ({_reason(exc, path)})") from None
    except Exception as exc:  # PIL raises many types for bad bytes
        raise DataError(f"{path}: not a readable image ({_reason(exc, path)})") from None
    with image:
        too_large = pixel_budget_exceeded(image.size, max_pixels)
        if too_large:
            raise DataError(f"{path}: too large: {too_large} (see --max-pixels)")
        try:
            image.load()
            return to_rgb(to_eight_bit(ImageOps.exif_transpose(image)))
        except MemoryError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: not a readable image ({_reason(exc, path)})") from None


def _reason(exc: BaseException, path: str | Path) -> str:
    """PIL's message in one line, without the path the error line names already."""
    return str(exc).splitlines()[0].replace(f" '{path}'", "") if str(exc) else type(exc).__name__


def top_k(probabilities: torch.Tensor, k: int, classnames: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row (``k`` capped at the number of classes)."""
    values, labels = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [Prediction(int(label), classnames[int(label)], float(p)) for p, label in zip(row_p, row_l)]
        for row_p, row_l in zip(values.tolist(), labels.tolist())
    ]


def predict_images(
    predictor: Predictor, paths: Sequence[Path], k: int = 5, batch_size: int = 64, progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[ImagePredictions]:
    """Top-``k`` predictions of every image in ``paths``, in order, ``batch_size`` images per forward;
    an image of more than ``max_pixels`` pixels is refused before it is decoded."""
    if k < 1:
        raise ValueError(f"k is {k}, expected at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}, expected at least 1")
    results: list[ImagePredictions] = []
    # disable=None: a bar only on a terminal, never in a log or a pipe.
    with tqdm(total=len(paths), desc="predict", unit="img", disable=None if progress else True, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            batch = paths[start:start + batch_size]
            probabilities = predictor.probabilities([open_image(p, max_pixels) for p in batch])
            for path, predictions in zip(batch, top_k(probabilities, k, predictor.classnames)):
                results.append(ImagePredictions(path, predictions))
            bar.update(len(batch))
    return results


def check_output_path(path: Optional[Path]) -> None:
    """Refuse, before any work is done, an output format we cannot write or a folder that is not there
    (a typo in ``-o`` must not create a tree of folders)."""
    if path is None:
        return
    if path.suffix.lower() not in OUTPUT_FORMATS:
        raise OutputError(f"{path}: unknown output format '{path.suffix}', expected a .csv or .json file")
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(f"{path}: folder {folder} not found")


def write_predictions(path: Path, results: Sequence[ImagePredictions]) -> None:
    """CSV (one row per image and rank) or JSON (one object per image), by ``path``'s extension; atomically."""
    check_output_path(path)
    if path.suffix.lower() == ".json":
        write_json(path, [r.to_dict() for r in results])
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for result in results:
            for rank, p in enumerate(result.predictions, start=1):
                writer.writerow([str(result.path), rank, p.classname, p.label, repr(p.probability)])
