"""ImageNet-LT, Places-LT, iNaturalist 2018: ``relative/path.jpg label`` lists under a root.

The lists are already long-tailed, so nothing is subsampled. Every list and
label is checked when the source is opened; images are decoded while the
shards are written.
"""

from __future__ import annotations

from pathlib import Path

from liftplus.data.sources import SourceData
from liftplus.data.sources.classnames import read_classnames
from liftplus.data.sources.photos import PhotoEntry, photo_split
from liftplus.errors import DataError
from liftplus.params import DataParams

REQUIRED_LISTS = ("train", "test")


def _required_file(value: str | None, param: str) -> Path:
    if not value:
        raise DataError(f"data.{param} is not set (the split-list source needs it)")
    path = Path(value)
    if not path.is_file():
        raise DataError(f"data.{param} {path}: file not found")
    return path


def read_split_list(path: Path, root: Path, num_classes: int) -> list[tuple[PhotoEntry, int]]:
    """``(entry, line number)`` per non-blank line; DataError naming ``file:line`` on a bad one."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.strip().rsplit(maxsplit=1)
        if len(parts) != 2 or not _is_int(parts[1]):
            found = line.strip()
            raise DataError(f"{path}:{number}: expected 'relative/path label', found {found!r}")
        relative, label = parts[0], int(parts[1])
        if not 0 <= label < num_classes:
            raise DataError(
                f"{path}:{number}: label {label} outside [0, {num_classes}) "
                f"({num_classes} class names)"
            )
        entries.append((PhotoEntry(root / relative, relative, label), number))
    if not entries:
        raise DataError(f"{path}: no 'relative/path label' lines")
    return entries


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit()


def open_split_list(data: DataParams) -> SourceData:
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found")
    names_path = _required_file(data.classnames, "classnames")
    classnames = read_classnames(names_path)
    num_classes = len(classnames)

    list_params = {"train": data.train_list, "val": data.val_list, "test": data.test_list}
    entries: dict[str, list[PhotoEntry]] = {}
    for split, value in list_params.items():
        if split not in REQUIRED_LISTS and not value:
            continue
        path = _required_file(value, f"{split}_list")
        lines = read_split_list(path, root, num_classes)
        entries[split] = [entry for entry, _ in lines]
        if split == "train":
            _check_class_count(names_path, path, num_classes, lines)

    source = SourceData(classnames=classnames, splits={})
    for split, split_entries in entries.items():
        source.splits[split] = photo_split(source, split, split_entries, data)
    return source


def _check_class_count(names_path: Path, train_path: Path, num_classes: int, lines) -> None:
    highest = max(entry.label for entry, _ in lines)
    if highest + 1 != num_classes:
        raise DataError(
            f"{names_path}: {num_classes} class names, but the labels in {train_path} "
            f"run 0..{highest} (expected {highest + 1} names)"
        )

