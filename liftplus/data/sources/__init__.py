"""Readers that turn a raw dataset into labelled, encoded image records.

Each reader validates its inputs when the source is opened (missing files,
labels out of range, bad class-name files) and then yields records lazily,
split by split, so the shard writer can stream any dataset size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from liftplus.errors import DataError
from liftplus.params import DataParams


@dataclass(frozen=True)
class Record:
    """One labelled sample, its image already encoded for the shard."""

    key: str
    """Unique within its split and safe as a tar member stem (no dots, no slashes)."""
    label: int
    image: bytes
    ext: str
    """``png``, ``jpg`` or ``npy`` (decoded pixels): the format of ``image``."""
    source: str
    """Where it came from: a path relative to ``data.root`` or ``file#index``."""


@dataclass(frozen=True)
class Skipped:
    """A file left out: it does not decode (``on_decode_error: skip``), is not an image, or is not read at all."""

    source: str
    error: str


@dataclass
class SourceData:
    """An opened source: class names and, per split, a function that iterates its records."""

    classnames: list[str]
    splits: dict[str, Callable[[], Iterator[Record]]]
    skipped: dict[str, list[Skipped]] = field(default_factory=dict)
    """Filled while a split is iterated (reset at the start of each iteration)."""
    holdout: dict[str, Any] | None = None
    """How a split was held out of another when the source has none, e.g.
    ``{"split": "test", "from": "train", "fraction": 0.2, "seed": 0}``; the manifest records it."""


SPLITS = ("train", "val", "test")


def record_key(split: str, index: int) -> str:
    return f"{split}-{index:08d}"


MIN_CLASSES = 2


def open_source(data: DataParams) -> SourceData:
    """Open the source named by ``data.source``; raise DataError on bad inputs."""
    source = _open_named(data)
    _check_enough_classes(source.classnames, data)
    return source


def _check_enough_classes(classnames: list[str], data: DataParams) -> None:
    """Every source: a classifier of fewer than two classes has nothing to learn."""
    if len(classnames) >= MIN_CLASSES:
        return
    where = f"data.classnames {data.classnames}" if data.source == "split-list" else f"data.root {data.root}"
    found = f"1 class found ({classnames[0]})" if classnames else "no class found"
    raise DataError(f"{where}: {found}; LIFT+ needs at least {MIN_CLASSES}")


def _open_named(data: DataParams) -> SourceData:
    if data.source == "fashion-mnist":
        from liftplus.data.sources.fashion_mnist import open_fashion_mnist

        return open_fashion_mnist(data)
    if data.source == "cifar100":
        from liftplus.data.sources.cifar100 import open_cifar100

        return open_cifar100(data)
    if data.source == "split-list":
        from liftplus.data.sources.split_list import open_split_list

        return open_split_list(data)
    if data.source == "imagefolder":
        from liftplus.data.sources.imagefolder import open_imagefolder

        return open_imagefolder(data)
    raise DataError(
        f"data.source is {data.source!r}, "
        "expected one of fashion-mnist, cifar100, split-list, imagefolder"
    )


__all__ = ["Record", "Skipped", "SourceData", "SPLITS", "open_source", "record_key"]
