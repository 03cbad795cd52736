"""Every split of an opened source written as shards, plus the manifest that describes them."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Iterator

from liftplus.data.images import PIXELS_EXT, as_pixels
from liftplus.data.manifest import MANIFEST_NAME, build_manifest, split_entry
from liftplus.data.shards import write_split_shards
from liftplus.data.sources import Record, SourceData
from liftplus.errors import DataError
from liftplus.io import write_json


def _counted(records: Iterator[Record], counts: Counter) -> Iterator[Record]:
    for record in records:
        counts[record.label] += 1
        yield record


def _as_pixels(records: Iterator[Record]) -> Iterator[Record]:
    for record in records:
        try:
            pixels = as_pixels(record.image, record.ext)
        except Exception as exc:  # the source decoded it once already: this is a broken record
            raise DataError(f"{record.source}: does not decode to pixels ({exc})") from None
        yield replace(record, image=pixels, ext=PIXELS_EXT)


def shard_source(
    source: SourceData, source_name: str, out_dir: str | Path, max_samples: int, max_bytes: int,
    store: str = "encoded",
) -> dict[str, Any]:
    """Write all splits into ``out_dir`` (shards + ``manifest.json``); return the manifest.

    ``store`` is ``encoded`` (PNG/JPEG as prepared by the source) or ``pixels``
    (decoded uint8 ``.npy``, see :mod:`liftplus.data.images`).
    """
    out_dir = Path(out_dir)
    num_classes = len(source.classnames)
    splits = {}
    for split, iterate in source.splits.items():
        counts: Counter = Counter()
        records = _counted(iterate(), counts)
        if store == "pixels":
            records = _as_pixels(records)
        shards = write_split_shards(records, out_dir, split, max_samples, max_bytes)
        skipped = [asdict(s) for s in source.skipped.get(split, [])]
        splits[split] = split_entry([counts[c] for c in range(num_classes)], shards, skipped)
    manifest = build_manifest(source_name, source.classnames, splits)
    if source.holdout is not None:  # last key: the manifests of sources without one are unchanged
        manifest["holdout"] = dict(source.holdout)
    write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest
