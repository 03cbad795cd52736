"""Fashion-MNIST from its idx files, made long-tailed by the CIFAR-LT rule (train only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from liftplus.data.sources import SourceData
from liftplus.data.sources.idx import read_idx
from liftplus.data.sources.arrays import array_split
from liftplus.errors import DataError
from liftplus.params import DataParams

CLASSNAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip

FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataError(f"data.root {root}: neither {stem}.gz nor {stem} found")


def _load_split(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, Path]:
    images_path, labels_path = (_find(root, stem) for stem in FILES[split])
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}"
        )
    out_of_range = np.flatnonzero(labels >= len(CLASSNAMES))
    if out_of_range.size:
        first = int(out_of_range[0])
        raise DataError(
            f"{labels_path}#{first}: label {labels[first]} outside [0, {len(CLASSNAMES)})"
        )
    return images, labels, images_path


def open_fashion_mnist(data: DataParams) -> SourceData:
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found (fashion-mnist idx files expected)")
    num_classes = len(CLASSNAMES)
    splits = {}
    for split in FILES:
        images, labels, images_path = _load_split(root, split)
        splits[split] = array_split(split, images, labels, num_classes, data, images_path)
    return SourceData(classnames=list(CLASSNAMES), splits=splits)

