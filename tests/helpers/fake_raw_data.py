"""Tiny synthetic datasets in each raw format the shard stage reads (imported by tests)."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    content = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(content, mtime=0))
    else:
        path.write_bytes(content)
    return path


def make_fashion_mnist(root: Path, per_class: int = 20, test_per_class: int = 3, gz: bool = True):
    """Fake idx files; labels interleaved (0,1,...,9,0,1,...) like a shuffled release."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", per_class), ("t10k", test_per_class)):
        labels = np.tile(np.arange(10, dtype=np.uint8), n)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
        arrays[prefix] = (images, labels)
    return arrays


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the CIFAR release: every str a BINSTRING opcode,
    numpy globals under ``numpy.core``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    def save_str(self, obj):
        self.save_bytes(obj.encode("latin1"))

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str
    dispatch[type] = save_global
    dispatch[type(len)] = save_global


def pickle_dumps(obj, protocol: int | str) -> bytes:
    if protocol != "py2":
        return pickle.dumps(obj, protocol=protocol)
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def make_cifar(
    root: Path, num_classes: int = 5, per_class: int = 20, test_per_class: int = 4, protocol: int | str = "py2"
) -> dict:
    """Fake CIFAR-100 python release files: str-keyed dicts pickled as Python 2 did."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", per_class), ("test", test_per_class)):
        labels = [int(c) for c in rng.permutation(np.repeat(np.arange(num_classes), n))]
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        batch = {
            "filenames": [f"img_{i}.png" for i in range(len(labels))],
            "batch_label": split,
            "fine_labels": labels,
            "coarse_labels": [0] * len(labels),
            "data": data,
        }
        (root / split).write_bytes(pickle_dumps(batch, protocol))
        arrays[split] = (data, np.array(labels))
    names = [f"class_{i}" for i in range(num_classes)]
    meta = {"fine_label_names": names, "coarse_label_names": ["all"]}
    (root / "meta").write_bytes(pickle_dumps(meta, protocol))
    return arrays


def save_image(
    path: Path, size=(40, 30), color=(200, 30, 60), fmt: str | None = None, mode: str = "RGB", **save_kw
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new(mode, size, color)
    image.save(path, format=fmt, **save_kw)
    return path


def image_bytes(image: Image.Image, fmt: str, **save_kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_kw)
    return buffer.getvalue()


SPLIT_LIST_NAMES = ["cat", "dog", "owl"]


def png(seed: int, size: int = 12) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def split_list_data(root: Path, names=SPLIT_LIST_NAMES, train_labels=(0, 1, 2) * 4, test_labels=(0, 1, 2)) -> dict:
    """Images under ``root/images``, one list per split and a class-names file; the data params."""
    lists = {}
    for split, labels in (("train", train_labels), ("test", test_labels)):
        lines = []
        for i, label in enumerate(labels):
            relative = f"{split}/{label}/{i:03d}.png"
            (root / "images" / relative).parent.mkdir(parents=True, exist_ok=True)
            (root / "images" / relative).write_bytes(png(100 * label + i))
            lines.append(f"{relative} {label}")
        lists[split] = root / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
    (root / "classnames.txt").write_text("\n".join(names) + "\n")
    return {
        "source": "split-list",
        "root": str(root / "images"),
        "lists": str(root),
        "imbalance_ratio": 1,
        "classnames": str(root / "classnames.txt"),
        "train_list": str(lists["train"]),
        "test_list": str(lists["test"]),
        "shard_max_samples": 4,
    }
