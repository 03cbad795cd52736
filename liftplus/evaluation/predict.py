"""Classify image files with a trained checkpoint: top-k classes and their probabilities.

The model is rebuilt from the checkpoint onto its backbone and sees each image
exactly as evaluation does: turned upright by its EXIF orientation and made
8-bit RGB as the sharding stage stores photos, then resized to
:func:`~liftplus.data.transforms.eval_resize`'s short side (evaluate's rule) and
centre-cropped or, with TTE, cut into five crops whose logits are averaged
before the softmax. :func:`evaluated_config` says which of the two the model was
evaluated with, so that ``liftplus predict`` runs the same by default.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from liftplus.data.images import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageTooLarge,
    UndecodableImage,
    is_image_name,
    open_decoded,
    to_eight_bit,
)
from liftplus.data.transforms import eval_resize, test_transform, to_rgb, tte_transform
from liftplus.errors import DataError, OutputError, ParamsError
from liftplus.evaluation.inference import forward_crops, ready_for_test
from liftplus.io import csv_text, write_json, write_text
from liftplus.model.build import LiftModel
from liftplus.model.checkpoint import checkpoint_classnames, model_from_checkpoint
from liftplus.runtime import Distributed, autocast_dtype, pick_device

if TYPE_CHECKING:
    from liftplus.params import EvaluateParams
    from liftplus.registry import ModelVersion

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
    tte: bool = False
    short_side: Optional[int] = None
    """What :func:`eval_resize` gave: the short side each image is resized to before its crop(s)."""

    @property
    def mode(self) -> str:
        """How images are seen, for titles: ``TTE, 5 crops, resize 248`` or ``centre crop, resize 256``."""
        crops = "TTE, 5 crops" if self.tte else "centre crop"
        return crops if self.short_side is None else f"{crops}, resize {self.short_side}"

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float logits ``[B, K]`` of transformed images ``[B, C, H, W]``, or of crops
        ``[B, n, C, H, W]`` averaged over the crops (as the reference's TTE)."""
        amp_dtype = autocast_dtype(self.precision, self.device)
        with torch.inference_mode():
            return forward_crops(self.model, images.to(self.device), amp_dtype).cpu()

    def probabilities(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Softmax probabilities ``[B, K]`` of PIL images."""
        return torch.softmax(self.logits(torch.stack([self.transform(img) for img in images])), dim=1)


def load_predictor(
    checkpoint: str | Path, tte: bool = False, device: str = "auto", expand: Optional[int] = None
) -> Predictor:
    """The model of ``checkpoint`` in eval mode on ``device``, with the backbone's test (or TTE) transform:
    the short side resized to ``eval_resize(image_size, tte, expand)`` (``expand`` as ``evaluate.tte_expand``)."""
    target = inference_device(device)
    model, config, ckpt = model_from_checkpoint(checkpoint)
    classnames = checkpoint_classnames(ckpt.get("extra") or {}, config.num_classes, checkpoint)
    pre = model.preprocess
    if tte:
        transform = tte_transform(pre.image_size, pre.mean, pre.std, expand=expand)
    else:
        transform = test_transform(pre.image_size, pre.mean, pre.std, expand=expand)
    precision = ready_for_test(model, target, "auto")  # as evaluate's default: the reference's test precision
    return Predictor(
        model,
        classnames,
        transform,
        target,
        precision=precision,
        tte=tte,
        short_side=eval_resize(pre.image_size, tte, expand),
    )


@dataclass(frozen=True)
class EvalConfig:
    """How a model was evaluated (``evaluate.tte``, ``evaluate.tte_expand``), and where that was read."""

    tte: bool
    expand: Optional[int]
    source: str


REFERENCE_CONFIG = EvalConfig(tte=True, expand=None, source="the reference's default")


def evaluated_config(version: Optional[ModelVersion] = None, params: Optional[EvaluateParams] = None) -> EvalConfig:
    """The test-time configuration ``predict`` uses unless told otherwise.

    A registered version whose tag's metrics record ``tte`` (the evaluate stage writes it
    to eval.json, the register stage copies it into the tag) is predicted as it was
    evaluated; its expand is the tag's ``tte_expand`` if recorded, else ``params``'.
    Otherwise the evaluate section of the project's params (``params``), and without
    those the reference's: TTE, its expand.
    """
    recorded: dict[str, Any] = version.metrics if version is not None else {}
    if isinstance(recorded.get("tte"), bool):
        expand = recorded.get("tte_expand")
        if "tte_expand" not in recorded or not (expand is None or _is_expand(expand)):
            expand = params.tte_expand if params is not None else None
        return EvalConfig(recorded["tte"], expand, f"{version.tag}'s registration")
    if params is not None:
        return EvalConfig(params.tte, params.tte_expand, "params")
    return REFERENCE_CONFIG


def _is_expand(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class ModelSource:
    """The checkpoint a ``--model`` names, how to name it in titles, and its registered version if any."""

    checkpoint: Path
    label: str
    version: Optional[ModelVersion] = None


def model_source(reference: str, repo: str | Path = ".") -> ModelSource:
    """A checkpoint file as given, or a registered version or stage (``v0.0.1``, ``NAME@v0.0.1``,
    ``prod``, ``NAME#prod``, ``latest``) resolved through the registry."""
    from liftplus.registry import resolve_version

    checkpoint, version = resolve_version(reference, repo)  # a path-like name that is no file: one line
    if version is None:
        return ModelSource(checkpoint, reference)
    return ModelSource(checkpoint, version_label(reference, version), version)


def version_label(reference: str, version: ModelVersion) -> str:
    """``NAME@vX.Y.Z`` for a version; a stage or ``latest`` with the version it stands for:
    ``liftplus-classifier#prod → v0.0.3``."""
    if reference in (version.version, version.tag):
        return version.tag
    if reference in ("latest", "greatest"):
        spelled = f"{version.name}@{reference}"
    elif "@" in reference or "#" in reference:
        spelled = reference
    else:
        spelled = f"{version.name}#{reference}"
    return f"{spelled} → {version.version}"


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
                p
                for p in path.rglob("*")
                if p.is_file()
                and is_image_file(p)
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise DataError(
                    f"{path}: no images in this folder (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)"
                )
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise DataError(f"{path}: no such image or folder")
    return images


def open_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """An upright 8-bit RGB image; any mode PIL reads (L, RGBA, P, CMYK, 16-bit) is converted.

    DataError if it does not decode, or has more than ``max_pixels`` pixels (refused from
    its header, before its pixels are decoded: a small file can hold a decompression bomb).
    """
    try:
        image = open_decoded(path, max_pixels)
    except ImageTooLarge as exc:
        raise DataError(f"{path}: {_without_path(exc, path)} (see --max-pixels)") from None
    except UndecodableImage as exc:
        raise DataError(f"{path}: not a readable image ({_without_path(exc, path)})") from None
    with image:
        try:
            return to_rgb(to_eight_bit(ImageOps.exif_transpose(image)))
        except MemoryError:
            raise
        except Exception as exc:  # a broken EXIF block, a mode PIL cannot convert
            raise DataError(f"{path}: not a readable image ({_without_path(exc, path)})") from None


def _without_path(exc: BaseException, path: str | Path) -> str:
    """The error's message in one line, without the path the error line names already."""
    return str(exc).splitlines()[0].replace(f" '{path}'", "") if str(exc) else type(exc).__name__


def top_k(probabilities: torch.Tensor, k: int, classnames: Sequence[str]) -> list[list[Prediction]]:
    """The ``k`` most probable classes of each row (``k`` capped at the number of classes)."""
    values, labels = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [Prediction(int(label), classnames[int(label)], float(p)) for p, label in zip(row_p, row_l)]
        for row_p, row_l in zip(values.tolist(), labels.tolist())
    ]


OnUnreadable = Callable[[Path, DataError], None]
"""Called with an image that does not decode (or is over the pixel budget) and why: return to skip
the image, raise to stop."""


def predict_images(
    predictor: Predictor,
    paths: Sequence[Path],
    k: int = 5,
    batch_size: int = 64,
    progress: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_unreadable: Optional[OnUnreadable] = None,
) -> list[ImagePredictions]:
    """Top-``k`` predictions of every image in ``paths``, in order, ``batch_size`` images per forward;
    an image of more than ``max_pixels`` pixels is refused before it is decoded.

    An image that cannot be read raises its DataError, or, with ``on_unreadable``, is
    passed to it and left out of the results if it returns.
    """
    if k < 1:
        raise ValueError(f"k is {k}, expected at least 1")
    if batch_size < 1:
        raise ValueError(f"batch_size is {batch_size}, expected at least 1")
    results: list[ImagePredictions] = []
    # disable=None: a bar only on a terminal, never in a log or a pipe.
    with tqdm(total=len(paths), desc="predict", unit="img", disable=None if progress else True, leave=False) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            batch, images = [], []
            for path in chunk:
                try:
                    images.append(open_image(path, max_pixels))
                except DataError as exc:
                    if on_unreadable is None:
                        raise
                    on_unreadable(path, exc)
                    continue
                batch.append(path)
            if batch:
                probabilities = predictor.probabilities(images)
                for path, predictions in zip(batch, top_k(probabilities, k, predictor.classnames)):
                    results.append(ImagePredictions(path, predictions))
            bar.update(len(chunk))
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
    rows = [
        dict(zip(CSV_COLUMNS, (str(result.path), rank, p.classname, p.label, repr(p.probability))))
        for result in results
        for rank, p in enumerate(result.predictions, start=1)
    ]
    write_text(path, csv_text(rows, CSV_COLUMNS))
