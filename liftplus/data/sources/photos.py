"""Records from photo files on disk (split-list and imagefolder sources).

Photos are decoded and, when needed, resized on a small thread pool (PIL
releases the GIL while it decodes, resizes and encodes); records come out in
input order, so the shards do not depend on the number of threads.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from liftplus.data.images import EncodedImage, UndecodableImage, prepare_photo
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


def _load(entry: PhotoEntry, max_short_side: int) -> EncodedImage | str:
    """The encoded image, or a one-line reason it cannot be used."""
    try:
        raw = entry.path.read_bytes()
    except OSError as exc:
        return f"cannot read: {exc.strerror or type(exc).__name__}"
    try:
        return prepare_photo(raw, max_short_side)
    except UndecodableImage as exc:
        return f"cannot decode: {exc}"


def photo_records(
    entries: Iterable[PhotoEntry],
    split: str,
    max_short_side: int,
    on_decode_error: str,
    skipped: list[Skipped],
    workers: int | None = None,
) -> Iterator[Record]:
    """Encode each entry, in order; a bad image raises DataError or is appended to ``skipped``."""
    workers = workers or _workers()
    window = 4 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[int, PhotoEntry, Future]] = deque()
        for index, entry in enumerate(entries):
            pending.append((index, entry, pool.submit(_load, entry, max_short_side)))
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


def photo_split(source: SourceData, split: str, entries: list[PhotoEntry], data: DataParams) -> Callable[[], Iterator[Record]]:
    """The split's records, lazily; images that fail to decode are listed in ``source.skipped[split]``."""

    def iterate() -> Iterator[Record]:
        skipped = source.skipped[split] = []
        yield from photo_records(entries, split, data.max_short_side, data.on_decode_error, skipped)

    return iterate
