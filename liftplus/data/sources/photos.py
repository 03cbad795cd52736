"""Records from photo files on disk (split-list and imagefolder sources).

Photos are decoded and, when needed, resized on a small thread pool (PIL
releases the GIL while it decodes, resizes and encodes); records come out in
input order, so the shards do not depend on the number of threads.
"""

from __future__ import annotations

import os
import stat
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from liftplus.data.images import (
    DEFAULT_MAX_PIXELS,
    EncodedImage,
    ImageTooLarge,
    UndecodableImage,
    prepare_photo,
)
from liftplus.data.sources import Record, Skipped, SourceData, record_key
from liftplus.errors import DataError
from liftplus.params import DataParams


@dataclass(frozen=True)
class PhotoEntry:
    path: Path
    """Absolute (or cwd-relative) path to read."""
    source: str
    """How the record names it: the path relative to ``data.root``."""
    label: int


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def not_regular_reason(mode: int) -> str | None:
    """Why a file of this ``st_mode`` is not read (it is not a regular file), or None."""
    if stat.S_ISREG(mode):
        return None
    kind = next((name for is_kind, name in _FILE_KINDS if is_kind(mode)), "not a plain file")
    return f"not a regular file ({kind})"


class NotRegularFile(OSError):
    """Opened something that is not a regular file; nothing was read from it."""


def _nonblocking_opener(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


def read_regular_file(path: Path) -> bytes:
    """The bytes of a regular file; NotRegularFile for anything else.

    Opened non-blocking, so a FIFO's open returns at once instead of waiting
    for a writer, and checked with fstat on the opened descriptor, so a file
    swapped for a FIFO or a device after the folder was listed is still never read.
    """
    with open(path, "rb", buffering=0, opener=_nonblocking_opener) as handle:
        reason = not_regular_reason(os.fstat(handle.fileno()).st_mode)
        if reason:
            raise NotRegularFile(reason)
        return handle.read()


def _load(entry: PhotoEntry, max_short_side: int, max_pixels: int) -> EncodedImage | str:
    """The encoded image, or a one-line reason it cannot be used."""
    try:
        raw = read_regular_file(entry.path)
    except NotRegularFile as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    try:
        return prepare_photo(raw, max_short_side, max_pixels)
    except ImageTooLarge as exc:
        return f"{exc} (data.max_pixels)"
    except UndecodableImage as exc:
        return f"cannot decode: {exc}"


def photo_records(
    entries: Iterable[PhotoEntry],
    split: str,
    max_short_side: int,
    on_decode_error: str,
    skipped: list[Skipped],
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Record]:
    """Encode each entry, in order; a bad image raises DataError or is appended to ``skipped``."""
    workers = workers or _workers()
    window = 4 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[int, PhotoEntry, Future]] = deque()
        for index, entry in enumerate(entries):
            pending.append((index, entry, pool.submit(_load, entry, max_short_side, max_pixels)))
            if len(pending) >= window:
                yield from _finish(pending.popleft(), split, on_decode_error, skipped)
        while pending:
            yield from _finish(pending.popleft(), split, on_decode_error, skipped)


def _finish(item, split: str, on_decode_error: str, skipped: list[Skipped]) -> Iterator[Record]:
    index, entry, future = item
    result = future.result()
    if isinstance(result, str):
        if on_decode_error == "fail":
            raise DataError(
                f"{entry.path}: {result} (set data.on_decode_error: skip to leave such images out)"
            )
        skipped.append(Skipped(entry.source, result))
        return
    yield Record(record_key(split, index), entry.label, result.data, result.ext, entry.source)


def photo_split(
    source: SourceData, split: str, entries: list[PhotoEntry], data: DataParams,
    listed: Sequence[Skipped] = (),
) -> Callable[[], Iterator[Record]]:
    """The split's records, lazily.

    ``source.skipped[split]`` holds ``listed`` (files the source found but will
    not read) followed by the images that fail to decode.
    """

    def iterate() -> Iterator[Record]:
        skipped = source.skipped[split] = list(listed)
        yield from photo_records(
            entries, split, data.max_short_side, data.on_decode_error, skipped, max_pixels=data.max_pixels
        )

    iterate.num_records = len(entries)  # type: ignore[attr-defined]  # the shard progress line's total
    return iterate
