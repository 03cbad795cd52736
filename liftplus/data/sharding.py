"""Every split of an opened source written as shards, plus the manifest that describes them."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from liftplus.data.images import PIXELS_EXT, as_pixels
from liftplus.data.manifest import MANIFEST_NAME, build_manifest, split_entry
from liftplus.data.shard_writer import write_split_shards
from liftplus.data.sources import Record, SourceData
from liftplus.errors import DataError
from liftplus.io import write_json
from liftplus.progress import Progress


def _counted(records: Iterator[Record], counts: Counter) -> Iterator[Record]:
    for record in records:
        counts[record.label] += 1
        yield record


def _shown(records: Iterator[Record], split: str, total: Optional[int]) -> Iterator[Record]:
    """``records``, counted on a progress bar or in lines such as
    ``shard train: 12,000 records 480.2 MB 2,134 rec/s ETA 0:01:05`` (ETA ``?`` when ``total`` is None)."""
    shown = Progress(f"shard {split}", total, unit="rec")
    stored = 0
    try:
        for record in records:
            stored += len(record.image)
            yield record
            shown.update(1, line=lambda: f"shard {split}: {shown.count:,} records {stored / 1e6:.1f} MB "
                                         f"{shown.rate():,.0f} rec/s ETA {shown.eta()}")
    finally:
        shown.close()


def expected_records(iterate: Callable[[], Iterator[Record]]) -> Optional[int]:
    """How many records a source's split will yield, when its reader says (``iterate.num_records``:
    a list's length); None for a folder walk, whose count is known only at its end."""
    return getattr(iterate, "num_records", None)


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
        records = _shown(records, split, expected_records(iterate))
        shards = write_split_shards(records, out_dir, split, max_samples, max_bytes)
        skipped = [asdict(s) for s in source.skipped.get(split, [])]
        splits[split] = split_entry([counts[c] for c in range(num_classes)], shards, skipped)
    manifest = build_manifest(source_name, source.classnames, splits)
    if source.holdout is not None:  # last key: the manifests of sources without one are unchanged
        manifest["holdout"] = dict(source.holdout)
    write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest
