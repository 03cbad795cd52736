"""A user's own images: ``root/<class>/<image>``, or ``root/{train,val,test}/<class>/<image>``.

Classes and files are ordered as torchvision's ImageFolder orders them
(sorted folder names; files sorted within each class, walking sub-folders).
With a split layout the class list comes from ``train/``; ``val/`` and
``test/`` may only use those classes.

The folders are not trusted. Only regular files are read. Each real folder
is walked once: the root, the split folders and every class folder are
known before any walk starts, so a link back to the root or into another
class is listed, never followed (it would copy images and give them the
wrong class). A link whose target leaves ``data.root`` is refused unless
``data.allow_outside_root``. Whatever is found but not read (not an image,
not a regular file, a folder already read) is listed in the split's
``skipped``; hidden names (``.x``) are ignored.

Without a ``test/`` folder, a seeded, stratified share of each class
(``data.holdout_fraction``) is held out of train as the test split. The
train split is then made long-tailed by the CIFAR-LT rule
(``data.imbalance_ratio``; 1 keeps it whole).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liftplus.data.images import IMAGE_EXTENSIONS, is_image_name
from liftplus.data.sources import Skipped, SourceData
from liftplus.data.sources.longtail_subsample import longtail_counts, longtail_indices
from liftplus.data.sources.photos import PhotoEntry, not_regular_reason, photo_split
from liftplus.errors import DataError
from liftplus.params import DataParams

SPLIT_FOLDERS = ("train", "val", "test")
HOLDOUT_SPLIT = "test"
HOLDOUT_FROM = "train"


@dataclass
class SplitFiles:
    """What one split folder holds: images to read (in ImageFolder order) and files not read."""

    entries: list[PhotoEntry] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class FolderTree:
    """One walk over ``data.root``: the real folders visited so far and the root-leaving rule."""

    def __init__(self, root: Path, allow_outside_root: bool):
        self.root = root
        self.real_root = os.path.realpath(root)
        self.allow_outside_root = allow_outside_root
        self.visited: dict[str, Path] = {self.real_root: root}
        """Real path → the path it was first reached by."""

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def real_path(self, path: Path) -> str:
        """``path`` with every link resolved; DataError if that leaves ``data.root`` (unless allowed)."""
        real = os.path.realpath(path)
        inside = os.path.commonpath([real, self.real_root]) == self.real_root
        if not inside and not self.allow_outside_root:
            raise DataError(
                f"{path}: links outside data.root ({real}); set data.allow_outside_root: true to read it"
            )
        return real

    def reserve(self, folder: Path) -> str:
        """Mark a split or class folder as visited before any walk; DataError if it is another's folder."""
        real = self.real_path(folder)
        if real in self.visited:
            raise DataError(f"{folder}: the same folder as {self.visited[real]} (each needs a folder of its own)")
        self.visited[real] = folder
        return real

    def _child_real(self, entry: os.DirEntry, parent_real: str) -> str:
        """The real path of a folder entry; only a link needs resolving (and may leave the root)."""
        if entry.is_symlink():
            return self.real_path(Path(entry.path))
        return os.path.join(parent_real, entry.name)

    def _skip(self, path: Path, reason: str, skipped: list[Skipped]) -> None:
        skipped.append(Skipped(self.relative(path), reason))

    def listing(self, folder: Path, skipped: list[Skipped]) -> list[os.DirEntry]:
        """The visible entries of ``folder`` sorted by name; an unreadable folder is listed as skipped."""
        try:
            with os.scandir(folder) as found:
                return sorted((e for e in found if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            self._skip(folder, f"cannot read folder: {exc.strerror or type(exc).__name__}", skipped)
            return []

    def file_status(self, entry: os.DirEntry, skipped: list[Skipped]) -> os.stat_result | None:
        """The entry's stat (through links), or None once it is listed as skipped."""
        try:
            return os.stat(entry.path)
        except OSError as exc:
            if entry.is_symlink():
                reason = f"link to nothing readable ({os.readlink(entry.path)}: {exc.strerror})"
            else:
                reason = f"cannot read: {exc.strerror or type(exc).__name__}"
            self._skip(Path(entry.path), reason, skipped)
            return None

    def images(self, folder: Path, real: str, skipped: list[Skipped]) -> list[Path]:
        """The image files under a class folder, as torchvision's ``sorted(os.walk(...))`` orders them."""
        found: list[tuple[str, str]] = []
        self._walk(folder, real, found, skipped)
        return [Path(dirpath) / name for dirpath, name in sorted(found)]

    def _walk(self, folder: Path, real: str, found: list[tuple[str, str]], skipped: list[Skipped]) -> None:
        for entry in self.listing(folder, skipped):
            path = Path(entry.path)
            status = self.file_status(entry, skipped)
            if status is None:
                continue
            if stat.S_ISDIR(status.st_mode):
                self._enter(entry, real, found, skipped)
            elif reason := not_regular_reason(status.st_mode):
                self._skip(path, reason, skipped)
            elif not is_image_name(entry.name):
                self._skip(path, f"not an image file (expected {', '.join(IMAGE_EXTENSIONS)})", skipped)
            else:
                self._child_real(entry, real)  # a file link must stay inside the root too
                found.append((str(folder), entry.name))

    def _enter(
        self, entry: os.DirEntry, parent_real: str, found: list[tuple[str, str]], skipped: list[Skipped]
    ) -> None:
        path = Path(entry.path)
        real = self._child_real(entry, parent_real)
        if real in self.visited:
            first = self.visited[real]
            name = "data.root" if first == self.root else self.relative(first)
            self._skip(path, f"a folder already read ({name}); each folder is walked once", skipped)
            return
        self.visited[real] = path
        self._walk(path, real, found, skipped)


def class_folders(folder: Path) -> list[str]:
    """The class folder names in a split folder (folders or links to one; hidden names ignored)."""
    with os.scandir(folder) as found:
        return sorted(e.name for e in found if not e.name.startswith(".") and e.is_dir())


def _loose_files(tree: FolderTree, split_dir: Path) -> list[Skipped]:
    """Files directly in a split folder: in no class, so not read."""
    skipped: list[Skipped] = []
    for entry in tree.listing(split_dir, skipped):
        if not entry.is_dir():
            skipped.append(Skipped(tree.relative(Path(entry.path)), "not in a class folder"))
    return skipped


@dataclass(frozen=True)
class ClassFolder:
    path: Path
    real: str
    label: int


def _class_folders(tree: FolderTree, split_dir: Path, classes: list[str]) -> list[ClassFolder]:
    """A split's class folders, each reserved in ``tree`` so that no walk enters it from elsewhere."""
    index = {name: label for label, name in enumerate(classes)}
    folders = []
    for name in class_folders(split_dir):
        if name not in index:
            raise DataError(f"{split_dir / name}: class folder not in {tree.root / 'train'}")
        folders.append(ClassFolder(split_dir / name, tree.reserve(split_dir / name), index[name]))
    return folders


def _split_files(tree: FolderTree, split_dir: Path, folders: list[ClassFolder]) -> SplitFiles:
    files = SplitFiles(skipped=_loose_files(tree, split_dir))
    for folder in folders:
        for path in tree.images(folder.path, folder.real, files.skipped):
            files.entries.append(PhotoEntry(path, tree.relative(path), folder.label))
    return files


def _labels(entries: list[PhotoEntry]) -> np.ndarray:
    return np.array([entry.label for entry in entries], dtype=np.int64)


def hold_out(
    entries: list[PhotoEntry], num_classes: int, fraction: float, seed: int
) -> tuple[list[PhotoEntry], list[PhotoEntry]]:
    """(kept, held out): per class, ``max(1, round(fraction * n))`` of its n files, at least one kept.

    Each class's files are shuffled in label order by one numpy Generator
    seeded with ``seed``; both lists keep the input order. A class with a
    single file keeps it for training (it then has no test image).
    """
    labels = _labels(entries)
    rng = np.random.default_rng(seed)
    held: set[int] = set()
    for label in range(num_classes):
        positions = np.flatnonzero(labels == label)
        if len(positions) < 2:
            continue
        count = min(len(positions) - 1, max(1, round(fraction * len(positions))))
        held.update(rng.permutation(positions)[:count].tolist())
    kept = [entry for i, entry in enumerate(entries) if i not in held]
    return kept, [entry for i, entry in enumerate(entries) if i in held]


def long_tailed(entries: list[PhotoEntry], classes: list[str], data: DataParams) -> list[PhotoEntry]:
    """The CIFAR-LT share of each class (``data.imbalance_ratio``), in the input order.

    Refused when the rule would leave a class without a training image.
    """
    if data.imbalance_ratio == 1:
        return entries
    labels = _labels(entries)
    counts = longtail_counts(len(labels), len(classes), data.imbalance_ratio)
    if 0 in counts:
        first = counts.index(0)
        raise DataError(
            f"data.imbalance_ratio {data.imbalance_ratio:g} keeps no training image of class "
            f"'{classes[first]}' ({len(labels)} images in {len(classes)} classes); "
            "lower it (1 keeps every image)"
        )
    kept = np.sort(longtail_indices(labels, len(classes), data.imbalance_ratio, data.seed))
    return [entries[i] for i in kept.tolist()]


def _split_dirs(tree: FolderTree) -> dict[str, Path]:
    root = tree.root
    if not (root / "train").is_dir():
        return {"train": root}
    folders = {split: root / split for split in SPLIT_FOLDERS if (root / split).is_dir()}
    for folder in folders.values():
        tree.reserve(folder)
    return folders


def _walk_tree(root: Path, allow_outside_root: bool) -> tuple[list[str], dict[str, Path], dict[str, SplitFiles]]:
    """Class names, split folders and the files of each split, as the shard stage finds them."""
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found")
    tree = FolderTree(root, allow_outside_root)
    split_dirs = _split_dirs(tree)
    classes = class_folders(split_dirs["train"])
    if not classes:
        raise DataError(f"data.root {split_dirs['train']}: no class folders")
    folders = {split: _class_folders(tree, folder, classes) for split, folder in split_dirs.items()}
    return classes, split_dirs, {split: _split_files(tree, split_dirs[split], folders[split]) for split in split_dirs}


def tree_class_counts(root: Path, split: str = "train", allow_outside_root: bool = False) -> list[int]:
    """Images per class in one split folder of a tree (the whole tree when it has no split folders),
    before any hold-out or long-tail subsampling: what ``liftplus lt-stats`` shows before sharding."""
    classes, _, files = _walk_tree(root, allow_outside_root)
    if split not in files:
        raise DataError(f"{root}: no '{split}' folder (found: {', '.join(files)})")
    counts = [0] * len(classes)
    for entry in files[split].entries:
        counts[entry.label] += 1
    return counts


def open_imagefolder(data: DataParams) -> SourceData:
    classes, split_dirs, files = _walk_tree(Path(data.root), data.allow_outside_root)
    _check_every_class_has_images(files["train"].entries, classes, split_dirs["train"])

    source = SourceData(classnames=classes, splits={})
    entries = {split: split_files.entries for split, split_files in files.items()}
    if HOLDOUT_SPLIT not in entries:
        entries[HOLDOUT_FROM], entries[HOLDOUT_SPLIT] = hold_out(
            entries[HOLDOUT_FROM], len(classes), data.holdout_fraction, data.seed
        )
        source.holdout = {
            "split": HOLDOUT_SPLIT, "from": HOLDOUT_FROM, "fraction": data.holdout_fraction, "seed": data.seed,
        }
    entries["train"] = long_tailed(entries["train"], classes, data)
    for split in SPLIT_FOLDERS:
        if split in entries:
            listed = files[split].skipped if split in files else ()
            source.splits[split] = photo_split(source, split, entries[split], data, listed)
    return source


def _check_every_class_has_images(entries: list[PhotoEntry], classes: list[str], train_dir: Path) -> None:
    used = {entry.label for entry in entries}
    empty = [name for label, name in enumerate(classes) if label not in used]
    if empty:
        raise DataError(f"{train_dir / empty[0]}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
