"""A user's own images: ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``.

Classes and files are ordered as torchvision's ImageFolder orders them
(sorted folder names; files sorted within each class, walking sub-folders).
With a split layout the class list comes from ``train/``; ``val/`` and
``test/`` may only use those classes. Nothing is subsampled.
"""

from __future__ import annotations

import os
from pathlib import Path

from liftplus.data.sources import SourceData
from liftplus.data.sources.photos import PhotoEntry, photo_split
from liftplus.errors import DataError
from liftplus.params import DataParams

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision's IMG_EXTENSIONS (matched case-insensitively), plus nothing else."""


def class_folders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _images_under(folder: Path) -> list[Path]:
    found = []
    for dirpath, _, filenames in sorted(os.walk(folder, followlinks=True)):
        for name in sorted(filenames):
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return found


def _entries(split_dir: Path, root: Path, classes: list[str]) -> list[PhotoEntry]:
    index = {name: label for label, name in enumerate(classes)}
    entries = []
    for name in class_folders(split_dir):
        if name not in index:
            raise DataError(f"{split_dir / name}: class folder not in {root / 'train'}")
        for path in _images_under(split_dir / name):
            entries.append(PhotoEntry(path, path.relative_to(root).as_posix(), index[name]))
    return entries


def open_imagefolder(data: DataParams) -> SourceData:
    root = Path(data.root)
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found")
    split_layout = (root / "train").is_dir()
    train_dir = root / "train" if split_layout else root
    classes = class_folders(train_dir)
    if not classes:
        raise DataError(f"data.root {train_dir}: no class folders")

    split_dirs = {"train": train_dir}
    if split_layout:
        split_dirs.update({s: root / s for s in ("val", "test") if (root / s).is_dir()})
    entries = {split: _entries(folder, root, classes) for split, folder in split_dirs.items()}
    used = {entry.label for entry in entries["train"]}
    empty = [name for label, name in enumerate(classes) if label not in used]
    if empty:
        raise DataError(f"{train_dir / empty[0]}: no image files ({', '.join(IMAGE_EXTENSIONS)})")

    source = SourceData(classnames=classes, splits={})
    for split, split_entries in entries.items():
        source.splits[split] = photo_split(source, split, split_entries, data)
    return source

