"""ImageNet-LT, Places-LT, iNaturalist 2018: ``relative/path.jpg label`` lists under a root.

The lists are already long-tailed, so nothing is subsampled (an imbalance ratio
other than 1 is refused). Every list and label is checked when the source is
opened; images are decoded while the shards are written.

The lists and the class-names file must lie in ``data.lists`` or under
``data.root``: those two folders are the shard stage's DVC deps, so an edit of a
list in place makes ``dvc repro`` re-shard instead of restoring the old shards.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

from liftplus.data.sources import SourceData
from liftplus.data.sources.classnames import read_classnames, read_text
from liftplus.data.sources.photos import PhotoEntry, photo_split
from liftplus.errors import DataError
from liftplus.params import DataParams

REQUIRED_LISTS = ("train", "test")
_LABEL = re.compile(r"-?[0-9]+")
"""ASCII digits only: ``str.isdigit`` also accepts '²' and '٣', which ``int`` then refuses or misreads."""


def parse_line(line: str) -> tuple[str, int] | None:
    """``(relative path, label)`` of one list line, or None when it is not of that shape."""
    parts = line.strip().rsplit(maxsplit=1)
    if len(parts) != 2 or not _LABEL.fullmatch(parts[1]):
        return None
    return parts[0], int(parts[1])


def _required_file(value: str | None, param: str) -> Path:
    if not value:
        raise DataError(f"data.{param} is not set (the split-list source needs it)")
    path = Path(value)
    if not path.is_file():
        raise DataError(f"data.{param} {path}: file not found")
    return path


def read_split_list(path: Path, root: Path, num_classes: int) -> list[tuple[PhotoEntry, int]]:
    """``(entry, line number)`` per non-blank line; DataError naming ``file:line`` on a bad one."""
    entries = []
    for number, line in enumerate(read_text(path, "split list").splitlines(), start=1):
        if not line.strip():
            continue
        parsed = parse_line(line)
        if parsed is None:
            raise DataError(f"{path}:{number}: expected 'relative/path label', found {_quoted(line)}")
        relative, label = parsed
        if not 0 <= label < num_classes:
            raise DataError(
                f"{path}:{number}: label {label} outside [0, {num_classes}) "
                f"({num_classes} class names)"
            )
        entries.append((PhotoEntry(root / relative, relative, label), number))
    if not entries:
        raise DataError(f"{path}: no 'relative/path label' lines")
    _warn_duplicates(path, entries)
    return entries


def counts_from_split_list(path: str | Path) -> list[int]:
    """Per-class image counts of a split-list file; the class count is the largest label + 1."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    counts: list[int] = []
    for number, line in enumerate(read_text(path, "split list").splitlines(), start=1):
        if not line.strip():
            continue
        parsed = parse_line(line)
        if parsed is None or parsed[1] < 0:
            raise DataError(f"{path}:{number}: expected 'relative/path label' with a label >= 0, got {_quoted(line)}")
        label = parsed[1]
        if label >= len(counts):
            counts.extend([0] * (label + 1 - len(counts)))
        counts[label] += 1
    if not counts:
        raise DataError(f"{path}: split list has no 'relative/path label' line")
    return counts


def _quoted(line: str, limit: int = 80) -> str:
    text = line.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _warn_duplicates(path: Path, entries: list[tuple[PhotoEntry, int]]) -> None:
    """Repeated lines are kept, as the reference's loader keeps them, but never silently."""
    seen: dict[tuple[str, int], int] = {}
    repeats = Counter()
    first_repeat = None
    for entry, number in entries:
        key = (entry.source, entry.label)
        if key in seen:
            repeats[key] += 1
            first_repeat = first_repeat or (number, seen[key])
        else:
            seen[key] = number
    if repeats:
        total = sum(repeats.values())
        print(f"warning: {path}: {total} duplicate line(s), kept as the reference keeps them "
              f"(first: line {first_repeat[0]} repeats line {first_repeat[1]})", file=sys.stderr)


def _inside(path: Path, folder: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _check_tracked(path: Path, param: str, data: DataParams) -> None:
    """A list DVC does not see as a dep would be read once and then never again (stale shards)."""
    if not (_inside(path, Path(data.lists)) or _inside(path, Path(data.root))):
        raise DataError(
            f"data.{param} {path}: outside data.lists ({data.lists}) and data.root, so DVC would not "
            "see it change; move it into data.lists or set data.lists to its folder"
        )


def _check_inside_root(entries: list[tuple[PhotoEntry, int]], path: Path, root: Path) -> None:
    """Every listed image must resolve (links included) to a file under ``root``.

    Folders are resolved once each (ImageNet-LT lists 1,000 of them for 115,846 files);
    a file is resolved on its own only when it is a link.
    """
    real_root = os.path.realpath(root) + os.sep
    real_folders: dict[str, str] = {}
    for entry, number in entries:
        folder, name = os.path.split(entry.path)
        if folder not in real_folders:
            real_folders[folder] = os.path.realpath(folder)
        real = os.path.join(real_folders[folder], name)
        if os.path.islink(real) or name in ("", ".", ".."):
            real = os.path.realpath(real)
        if not real.startswith(real_root):
            raise DataError(
                f"{path}:{number}: {entry.source} leaves data.root {root}; "
                "set data.allow_outside_root: true to read it"
            )


def open_split_list(data: DataParams) -> SourceData:
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found")
    if data.imbalance_ratio != 1:
        raise DataError(
            f"data.imbalance_ratio is {data.imbalance_ratio:g}, but split lists are already long-tailed "
            "and are never subsampled; set data.imbalance_ratio: 1"
        )
    names_path = _required_file(data.classnames, "classnames")
    _check_tracked(names_path, "classnames", data)
    classnames = read_classnames(names_path)
    num_classes = len(classnames)

    list_params = {"train": data.train_list, "val": data.val_list, "test": data.test_list}
    entries: dict[str, list[PhotoEntry]] = {}
    for split, value in list_params.items():
        if split not in REQUIRED_LISTS and not value:
            continue
        path = _required_file(value, f"{split}_list")
        _check_tracked(path, f"{split}_list", data)
        lines = read_split_list(path, root, num_classes)
        if not data.allow_outside_root:
            _check_inside_root(lines, path, root)
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
