"""CIFAR-100 from the python pickle release, made long-tailed by the CIFAR-LT rule (train only).

The release files are pickles; they are read by an unpickler that can build
nothing but plain containers and uint8 numpy arrays, so a file carrying a
code-execution payload is refused before any of it runs.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from liftplus.data.sources import SourceData
from liftplus.data.sources.arrays import array_split
from liftplus.errors import DataError
from liftplus.params import DataParams

IMAGE_BYTES = 3 * 32 * 32
RELEASE_FOLDER = "cifar-100-python"

try:
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy < 2
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("object arrays are not allowed")
    return dtype


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """How protocol-2 pickles written by Python 3 spell a bytes object."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode("latin1")


def _frombuffer(buffer: bytes, dtype: Any, shape: tuple, order: str) -> np.ndarray:
    """How numpy pickles an array with protocol 5."""
    array = np.frombuffer(buffer, dtype=_safe_dtype(dtype))
    return array.reshape(shape, order=order).copy()


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Builds dicts, lists, strings, numbers and plain numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed") from None


def load_release_pickle(path: Path) -> dict[str, Any]:
    """One release file as a dict with str keys; DataError naming the file if it is not one."""
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        obj = _ArrayOnlyUnpickler(io.BytesIO(content), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure is a bad file, never a crash
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: refused or unreadable CIFAR pickle ({reason})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _release_dir(root: Path) -> Path:
    if not root.is_dir():
        raise DataError(f"data.root {root}: folder not found (CIFAR-100 python release expected)")
    for candidate in (root, root / RELEASE_FOLDER):
        if all((candidate / name).is_file() for name in ("train", "test", "meta")):
            return candidate
    raise DataError(
        f"data.root {root}: no train, test and meta files (nor in {RELEASE_FOLDER}/)"
    )


def _classnames(path: Path) -> list[str]:
    meta = load_release_pickle(path)
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: no fine_label_names list")
    names = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]
    if len(set(names)) != len(names):
        raise DataError(f"{path}: fine_label_names has duplicates")
    return names


def _images_and_labels(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = load_release_pickle(path)
    data, labels = batch.get("data"), batch.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DataError(f"{path}: 'data' is not a 2-d uint8 array")
    if data.shape[1] != IMAGE_BYTES:
        raise DataError(
            f"{path}: rows of 'data' hold {data.shape[1]} bytes, expected {IMAGE_BYTES}"
        )
    if not isinstance(labels, list) or len(labels) != len(data):
        raise DataError(f"{path}: expected {len(data)} fine_labels, one per image")
    labels_array = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((labels_array < 0) | (labels_array >= num_classes))
    if bad.size:
        first = int(bad[0])
        raise DataError(f"{path}#{first}: label {labels_array[first]} outside [0, {num_classes})")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels_array


def open_cifar100(data: DataParams) -> SourceData:
    folder = _release_dir(Path(data.root))
    classnames = _classnames(folder / "meta")
    num_classes = len(classnames)
    splits = {}
    for split in ("train", "test"):
        path = folder / split
        images, labels = _images_and_labels(path, num_classes)
        splits[split] = array_split(split, images, labels, num_classes, data, path)
    return SourceData(classnames=classnames, splits=splits)

