"""``data/shards/manifest.json``: what the shards hold, and the checks that they still do.

Format ``liftplus-shards/1``::

    {"format": "liftplus-shards/1", "source": "fashion-mnist", "classnames": [...],
     "num_classes": K,
     "splits": {"train": {"num_samples": N, "class_counts": [K ints, by label],
                          "shards": [{"name", "sha256", "num_samples", "bytes"}, ...],
                          "skipped": [{"source", "error"}, ...]},
                "val": {...}, "test": {...}}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from liftplus.errors import DataError
from liftplus.io import sha256_file

FORMAT = "liftplus-shards/1"
MANIFEST_NAME = "manifest.json"
SPLIT_ORDER = ("train", "val", "test")


def split_entry(
    class_counts: Sequence[int],
    shards: list[dict[str, Any]],
    skipped: Iterable[dict[str, str]] = (),
) -> dict[str, Any]:
    return {
        "num_samples": int(sum(class_counts)),
        "class_counts": [int(c) for c in class_counts],
        "shards": list(shards),
        "skipped": list(skipped),
    }


def build_manifest(
    source: str, classnames: Sequence[str], splits: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """The manifest object; ``splits`` maps split name to :func:`split_entry` output."""
    ordered = {name: splits[name] for name in SPLIT_ORDER if name in splits}
    manifest = {
        "format": FORMAT,
        "source": source,
        "classnames": list(classnames),
        "num_classes": len(classnames),
        "splits": ordered,
    }
    _check(manifest, "manifest")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Load and check a manifest; DataError naming the path and the bad key."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found (run the shard stage first)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read manifest ({exc})") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    _check(manifest, str(path))
    return manifest


def _is_count(value: Any) -> bool:
    """A JSON integer >= 0 (``true`` is an int to Python, not a count)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _is_skipped_entry(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(value.get(f), str) for f in ("source", "error"))


SHARD_FIELDS = {
    "name": (lambda v: isinstance(v, str) and v != "" and Path(v).name == v, "a plain file name"),
    "sha256": (_is_sha256, "64 lowercase hex digits"),
    "num_samples": (_is_count, "an integer >= 0"),
    "bytes": (_is_count, "an integer >= 0"),
}
"""Each field of a shard entry: its test and what a failing value was expected to be."""


def _short(value: Any) -> str:
    """A value for an error line: its repr, cut at 40 characters."""
    text = repr(value) if not isinstance(value, (list, dict)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _expect(value: Any, valid, key: str, expected: str, fail) -> None:
    if not valid(value):
        raise fail(f"'{key}' is {_short(value)}, expected {expected}")


def _check(manifest: Any, where: str) -> None:
    """DataError naming the first key of ``manifest`` that is missing or of the wrong type or value.

    Every field is type-checked here, so code reading a checked manifest meets no
    string where it sums counts or slices a digest.
    """
    def fail(problem: str) -> DataError:
        return DataError(f"{where}: {problem}")

    if not isinstance(manifest, dict):
        raise fail("expected a JSON object")
    for key in ("format", "source", "classnames", "num_classes", "splits"):
        if key not in manifest:
            raise fail(f"missing key '{key}'")
    if manifest["format"] != FORMAT:
        raise fail(f"'format' is {_short(manifest['format'])}, expected {FORMAT!r}")
    _expect(manifest["source"], lambda v: isinstance(v, str), "source", "a string", fail)
    classnames, num_classes = manifest["classnames"], manifest["num_classes"]
    if not isinstance(classnames, list) or not all(isinstance(n, str) for n in classnames):
        raise fail("'classnames' must be a list of strings")
    _expect(num_classes, _is_count, "num_classes", "an integer >= 0", fail)
    if num_classes != len(classnames):
        raise fail(f"'num_classes' is {num_classes!r} but there are {len(classnames)} classnames")
    splits = manifest["splits"]
    if not isinstance(splits, dict) or "train" not in splits:
        raise fail("'splits' must be an object with at least 'train'")
    for name, split in splits.items():
        _check_split(split, f"splits.{name}", num_classes, fail)


def _check_split(split: Any, key: str, num_classes: int, fail) -> None:
    if not isinstance(split, dict):
        raise fail(f"'{key}' must be an object")
    for field in ("num_samples", "class_counts", "shards", "skipped"):
        if field not in split:
            raise fail(f"missing key '{key}.{field}'")
    counts = split["class_counts"]
    if not isinstance(counts, list) or len(counts) != num_classes or not all(_is_count(c) for c in counts):
        raise fail(f"'{key}.class_counts' must be {num_classes} counts, one per class")
    declared = split["num_samples"]
    _expect(declared, _is_count, f"{key}.num_samples", "an integer >= 0", fail)
    if declared != sum(counts):
        raise fail(f"'{key}.num_samples' is {declared!r}, class_counts sum to {sum(counts)}")
    skipped = split["skipped"]
    if not isinstance(skipped, list) or not all(_is_skipped_entry(s) for s in skipped):
        raise fail(f"'{key}.skipped' must be a list of {{\"source\", \"error\"}} objects")
    shards = split["shards"]
    if not isinstance(shards, list):
        raise fail(f"'{key}.shards' must be a list")
    for index, shard in enumerate(shards):
        _check_shard(shard, f"{key}.shards[{index}]", fail)
    in_shards = sum(shard["num_samples"] for shard in shards)
    if in_shards != declared:
        raise fail(f"'{key}': shards hold {in_shards} samples, num_samples is {declared}")


def _check_shard(shard: Any, key: str, fail) -> None:
    if not isinstance(shard, dict) or not all(f in shard for f in SHARD_FIELDS):
        raise fail(f"'{key}' needs name, sha256, num_samples and bytes")
    for field, (valid, expected) in SHARD_FIELDS.items():
        _expect(shard[field], valid, f"{key}.{field}", expected, fail)


def shard_paths(manifest: dict[str, Any], shard_dir: str | Path, split: str) -> list[Path]:
    if split not in manifest["splits"]:
        raise DataError(
            f"the shards have no '{split}' split (they have {', '.join(manifest['splits'])})"
        )
    return [Path(shard_dir) / shard["name"] for shard in manifest["splits"][split]["shards"]]


def verify_checksums(
    manifest: dict[str, Any], shard_dir: str | Path, splits: Iterable[str] | None = None
) -> None:
    """DataError naming the first shard that is missing or whose sha256 is not the manifest's."""
    for split in splits if splits is not None else manifest["splits"]:
        for path, shard in zip(
            shard_paths(manifest, shard_dir, split), manifest["splits"][split]["shards"]
        ):
            if not path.is_file():
                raise DataError(f"{path}: shard listed in the manifest is missing")
            actual = sha256_file(path)
            if actual != shard["sha256"]:
                raise DataError(
                    f"{path}: sha256 {actual[:12]}... does not match the manifest's "
                    f"{shard['sha256'][:12]}... (changed since written; rerun the shard stage)"
                )
