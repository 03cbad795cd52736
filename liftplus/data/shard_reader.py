"""Reading WebDataset shards back: the one tar reader of the project, with clear errors.

A sample is three tar members, ``{key}.cls`` (decimal label), ``{key}.json``
(``{"label": ..., "source": ...}``) and its image, ``{key}.png``, ``{key}.jpg`` or
``{key}.npy`` (decoded pixels); :mod:`liftplus.data.shard_writer` writes them. The
training index (image offsets) and the validate stage (image bytes) both walk
shards with :func:`read_samples`, which reads nothing but headers and small members.
"""

from __future__ import annotations

import itertools
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from liftplus.errors import DataError

IMAGE_EXTS = ("png", "jpg", "npy")
"""The image members a shard may hold."""
END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE


def _corrupt(path: Path, why: str) -> DataError:
    return DataError(f"{path}: corrupt or truncated shard ({why})")


@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard as :func:`read_samples` finds it: where its image lies, its label, its meta."""

    key: str
    label: int
    ext: str
    """The image member's extension: one of :data:`IMAGE_EXTS`."""
    offset: int
    """Byte offset of the image's data in the tar file."""
    size: int
    meta: dict[str, Any]
    """The ``{key}.json`` member ({} when the sample has none, or when it was not read)."""


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the basename; the rest, lowercased, the extension."""
    directory, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def read_samples(path: str | Path, with_meta: bool = False) -> Iterator[ShardSample]:
    """Every sample of one shard in member order, reading only the tar headers and the small
    ``.cls`` (and, ``with_meta``, ``.json``) members; DataError naming the shard when it is not whole.

    The one tar reader of the project: the training index (image offsets) and the
    validate stage (image bytes) both walk shards with it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: shard not found")
    file_size = path.stat().st_size
    try:
        with tarfile.open(path, "r:") as tar:
            key, members = None, {}
            for member in tar:
                name_key, ext = split_member_name(member.name)
                if not member.isfile() or not ext:
                    raise _corrupt(path, f"unexpected member {member.name!r}")
                if member.offset_data + member.size > file_size:
                    raise _corrupt(path, f"member {member.name} runs past the end")
                if key is not None and name_key != key:
                    yield _sample(path, key, members)
                    members = {}
                key = name_key
                if ext in members:
                    raise _corrupt(path, f"sample {key} has two {ext} members")
                small = ext == "cls" or (ext == "json" and with_meta)
                members[ext] = (member, tar.extractfile(member).read() if small else None)
            if key is not None:
                yield _sample(path, key, members)
            end = tar.offset
        _check_end_of_archive(path, end)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise _corrupt(path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def _sample(path: Path, key: str, members: dict[str, tuple[tarfile.TarInfo, bytes | None]]) -> ShardSample:
    images = [ext for ext in IMAGE_EXTS if ext in members]
    if len(images) > 1:
        raise DataError(f"{path}: sample {key} has more than one image")
    if not images:
        raise _corrupt(path, f"sample {key} has members {sorted(members)}, expected an image ({'|'.join(IMAGE_EXTS)})")
    if "cls" not in members:
        raise DataError(f"{path}: sample {key} has an image but no .cls label")
    unexpected = sorted(set(members) - {images[0], "cls", "json"})
    if unexpected:
        raise _corrupt(path, f"sample {key} has unexpected members {unexpected}")
    cls_member, cls_bytes = members["cls"]
    try:
        label = int(cls_bytes.decode("ascii").strip())
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path}: {cls_member.name} is not an integer label") from None
    meta: dict[str, Any] = {}
    json_bytes = members.get("json", (None, None))[1]
    if json_bytes is not None:
        try:
            meta = json.loads(json_bytes.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise _corrupt(path, f"sample {key} has an unreadable json member") from None
    image = members[images[0]][0]
    return ShardSample(key, label, images[0], image.offset_data, image.size, meta)


def iter_shard(path: str | Path) -> Iterator[tuple[str, int, bytes, str, dict[str, Any]]]:
    """``(key, label, image_bytes, ext, meta)`` per sample of a shard the shard stage wrote
    (every sample with its json); DataError naming a bad shard."""
    path = Path(path)
    samples = read_samples(path, with_meta=True)
    first = next(samples, None)  # checks the shard is there before it is opened
    if first is None:
        return
    with open(path, "rb") as file:
        for sample in itertools.chain([first], samples):
            if not sample.meta:
                raise _corrupt(path, f"sample {sample.key} has no json member")
            file.seek(sample.offset)
            image = file.read(sample.size)
            if len(image) != sample.size:
                raise _corrupt(path, f"{sample.key}.{sample.ext} is cut short")
            yield sample.key, sample.label, image, sample.ext, sample.meta


def _check_end_of_archive(path: Path, offset: int) -> None:
    """A tar cut exactly between members reads as complete; its missing end marker gives it away."""
    with open(path, "rb") as f:
        f.seek(offset)
        tail = f.read(END_OF_ARCHIVE)
    if len(tail) != END_OF_ARCHIVE or tail.count(0) != END_OF_ARCHIVE:
        raise _corrupt(path, "no end-of-archive marker")
