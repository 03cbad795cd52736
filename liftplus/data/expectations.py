"""The data expectations of the validate stage, as a great-expectations 1.x suite.

The facts are gathered first, without GX: the manifest, one pass over every shard
(records and labels counted, a deterministic sample decoded with PIL) and, when
asked, the manifest's checksums. They go into small pandas frames, one per kind of
row (split, class, class name, shard, decoded record), and each frame is validated
by its own expectation suite in an ephemeral GX context. Every failed expectation
becomes one :class:`Failure` line saying which expectation failed on what, with
examples.

Manifest and shard reading are the shard writer's (``liftplus.data.manifest``,
``liftplus.data.shard_reader``). ``read_manifest`` already refuses a manifest whose
counts disagree with each other; the suite checks them again, so its verdict
does not depend on who wrote or read the manifest.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from liftplus import offline
from liftplus.data.shard_reader import iter_shard
from liftplus.data.manifest import MANIFEST_NAME, read_manifest, verify_checksums
from liftplus.errors import DataError

TRAIN_SPLIT = "train"
IMAGE_MODES = ("L", "RGB")
FORMAT_OF_EXT = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "npy": "NPY"}
LT_RULE_SOURCES = frozenset({"fashion-mnist", "cifar100"})
"""Sources made long-tailed by the CIFAR-LT rule, whose train counts fall with the label."""
EXAMPLES_SHOWN = 3


@dataclass(frozen=True)
class Failure:
    """One failed expectation: what was expected of what, and what was seen."""

    expectation: str
    observed: str

    def __str__(self) -> str:
        return f"{self.expectation}: {self.observed}"


@dataclass
class ValidationReport:
    manifest: dict[str, Any]
    failures: list[Failure]
    num_expectations: int
    decoded: dict[str, int] = field(default_factory=dict)
    """Records decoded per split."""

    @property
    def success(self) -> bool:
        return not self.failures

    def counts_by_split(self) -> dict[str, list[int]]:
        return {name: list(split["class_counts"]) for name, split in self.manifest["splits"].items()}


# --- facts: checksums and one pass over the shards ------------------------------------


def _checksum_problem(manifest: dict, shard_dir: Path, split: str) -> str | None:
    try:
        verify_checksums(manifest, shard_dir, splits=[split])
    except (DataError, OSError) as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def sample_positions(num_samples: int, sample_size: int) -> list[int]:
    """Evenly spaced record positions (0 first): the same sample on every run."""
    size = min(num_samples, sample_size)
    return [i * num_samples // size for i in range(size)]


def decode_facts(image_bytes: bytes, ext: str) -> dict[str, Any]:
    """Open and fully decode one encoded image; report what PIL saw or why it failed."""
    from liftplus.data.images import open_image

    facts: dict[str, Any] = {
        "decoded": False, "error": None, "mode": None, "width": None, "height": None,
        "format": None, "expected_format": FORMAT_OF_EXT.get(ext.lower(), ext.upper()),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = open_image(image_bytes, ext.lower())
            facts.update(decoded=True, mode=image.mode, width=image.width, height=image.height,
                         format=image.format or FORMAT_OF_EXT.get(ext.lower()))
    except Exception as exc:  # decode sanity is exactly "does any decoding error happen"
        message = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "", str(exc)).strip()  # PIL names the buffer
        facts["error"] = f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"
    return facts


@dataclass
class ShardFacts:
    records: dict[str, pd.DataFrame]
    """Per split: one row per decoded sample record."""
    shards: pd.DataFrame
    """One row per shard: readable or not, records found vs the manifest's count."""
    label_counts: pd.DataFrame
    """One row per (split, label): images in the shards vs the manifest's class_counts."""


def read_shard_facts(manifest: dict, shard_dir: Path, sample_size: int) -> ShardFacts:
    records: dict[str, pd.DataFrame] = {}
    shard_rows: list[dict[str, Any]] = []
    label_rows: list[dict[str, Any]] = []
    for split, info in manifest["splits"].items():
        wanted = set(sample_positions(int(info["num_samples"]), sample_size))
        split_records: list[dict[str, Any]] = []
        labels_seen: Counter[int] = Counter()
        all_readable = True
        position = 0
        for shard in info["shards"]:
            path = shard_dir / shard["name"]
            row = {"split": split, "shard": shard["name"], "manifest_records": int(shard["num_samples"]),
                   "records": None, "readable": True, "problem": None}
            start = position
            try:
                for key, label, image_bytes, ext, meta in iter_shard(path):
                    labels_seen[int(label)] += 1
                    if position in wanted:
                        meta_label = meta.get("label", label) if isinstance(meta, Mapping) else label
                        split_records.append({
                            "shard": shard["name"], "position": position - start, "key": key,
                            "label": int(label), "meta_label": meta_label, "ext": ext,
                            **decode_facts(image_bytes, ext),
                        })
                    position += 1
                row["records"] = position - start
            except (DataError, OSError) as exc:
                row.update(readable=False, problem=str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                all_readable = False
                position = start + int(shard["num_samples"])
            shard_rows.append(row)
        records[split] = pd.DataFrame(split_records, columns=_RECORD_COLUMNS)
        if all_readable:
            manifest_counts = [int(c) for c in info["class_counts"]]
            for label in sorted(set(range(len(manifest_counts))) | set(labels_seen)):
                in_manifest = manifest_counts[label] if 0 <= label < len(manifest_counts) else 0
                label_rows.append({"split": split, "label": label, "in_shards": labels_seen[label],
                                   "in_manifest": in_manifest})
    return ShardFacts(
        records=records,
        shards=pd.DataFrame(shard_rows, columns=["split", "shard", "manifest_records", "records",
                                                 "readable", "problem"]),
        label_counts=pd.DataFrame(label_rows, columns=["split", "label", "in_shards", "in_manifest"]),
    )


_RECORD_COLUMNS = ["shard", "position", "key", "label", "meta_label", "ext", "decoded", "error", "mode",
                   "width", "height", "format", "expected_format"]


# --- frames from the manifest alone -----------------------------------------------------


def split_frame(manifest: dict) -> pd.DataFrame:
    rows = []
    for split, info in manifest["splits"].items():
        rows.append({
            "split": split,
            "num_classes": manifest["num_classes"],
            "classnames": len(manifest["classnames"]),
            "class_counts": len(info["class_counts"]),
            "num_samples": info["num_samples"],
            "sum_class_counts": sum(int(c) for c in info["class_counts"]),
            "sum_shard_samples": sum(int(s["num_samples"]) for s in info["shards"]),
        })
    return pd.DataFrame(rows)


def train_class_frame(manifest: dict) -> pd.DataFrame:
    """Training classes in label order (empty when there is no train split)."""
    counts = manifest["splits"].get(TRAIN_SPLIT, {}).get("class_counts", [])
    names = manifest["classnames"]
    return pd.DataFrame({
        "label": list(range(len(counts))),
        "classname": [names[i] if i < len(names) else None for i in range(len(counts))],
        "count": [int(c) for c in counts],
    })


# --- the suite ----------------------------------------------------------------------------


@dataclass
class Check:
    """One expectation and how to tell a person what it saw when it fails."""

    expectation: Any
    args: str
    subject: str
    verb: str
    example: Callable[[pd.Series], str]

    @property
    def title(self) -> str:
        return f"{self.expectation.expectation_type}({self.args})"

    def observed(self, result: Mapping[str, Any], frame: pd.DataFrame) -> str:
        unexpected = result.get("unexpected_count")
        total = result.get("element_count", len(frame))
        index = result.get("partial_unexpected_index_list") or []
        examples = "; ".join(self.example(frame.loc[i]) for i in index[:EXAMPLES_SHOWN])
        head = f"{unexpected} of {total} " if unexpected is not None else ""
        return f"{head}{self.subject} {self.verb}" + (f", e.g. {examples}" if examples else "")


@dataclass
class FrameChecks:
    name: str
    frame: pd.DataFrame
    checks: list[Check]


def _import_gx():
    """great_expectations, offline and quiet (no analytics, no progress bars, no INFO logs)."""
    offline.apply()
    import great_expectations as gx

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("great_expectations"):
            logging.getLogger(name).setLevel(logging.ERROR)
    return gx


def build_checks(manifest: dict, facts: ShardFacts, checksum_problems: dict[str, str | None] | None,
                 max_short_side: int = 0) -> list[FrameChecks]:
    gx = _import_gx()
    E = gx.expectations
    K = int(manifest["num_classes"])
    frames: list[FrameChecks] = []

    splits = split_frame(manifest)
    frames.append(FrameChecks("splits", splits, [
        Check(E.ExpectColumnDistinctValuesToContainSet(column="split", value_set=[TRAIN_SPLIT]),
              f"split, ['{TRAIN_SPLIT}']", "manifest", "has no train split",
              lambda r: r["split"]),
        Check(E.ExpectColumnPairValuesToBeEqual(column_A="classnames", column_B="num_classes"),
              "len(classnames), num_classes", "splits", "have a class-name count unlike num_classes",
              lambda r: f"{r['classnames']} class names, num_classes {r['num_classes']}"),
        Check(E.ExpectColumnPairValuesToBeEqual(column_A="class_counts", column_B="num_classes"),
              "len(class_counts), num_classes", "splits", "have a class_counts length unlike num_classes",
              lambda r: f"{r['split']}: {r['class_counts']} class counts, num_classes {r['num_classes']}"),
        Check(E.ExpectColumnPairValuesToBeEqual(column_A="num_samples", column_B="sum_class_counts"),
              "num_samples, sum(class_counts)", "splits", "have num_samples unlike the sum of class_counts",
              lambda r: f"{r['split']}: num_samples {r['num_samples']}, sum {r['sum_class_counts']}"),
        Check(E.ExpectColumnPairValuesToBeEqual(column_A="num_samples", column_B="sum_shard_samples"),
              "num_samples, sum(shards.num_samples)", "splits",
              "have num_samples unlike the sum over their shards",
              lambda r: f"{r['split']}: num_samples {r['num_samples']}, shards {r['sum_shard_samples']}"),
    ]))

    classnames = pd.DataFrame({"classname": [str(n) for n in manifest["classnames"]]})
    frames.append(FrameChecks("classnames", classnames, [
        Check(E.ExpectColumnValuesToBeUnique(column="classname"), "classname", "class names",
              "are duplicated", lambda r: f"{r['classname']!r} (label {r.name})"),
        Check(E.ExpectColumnValueLengthsToBeBetween(column="classname", min_value=1), "classname, 1",
              "class names", "are empty", lambda r: f"class {r.name}"),
    ]))

    train = train_class_frame(manifest)
    train_checks = [
        Check(E.ExpectColumnValuesToBeBetween(column="count", min_value=1), "count, 1", "train classes",
              "have no image", lambda r: f"label {r['label']} ({r['classname']})"),
    ]
    if manifest.get("source") in LT_RULE_SOURCES:
        train_checks.append(Check(
            E.ExpectColumnValuesToBeDecreasing(column="count", strictly=False), "count by label",
            f"train classes ({manifest['source']}: the long-tail rule keeps fewer images for higher labels)",
            "have more images than the class before",
            lambda r: f"label {r['label']}: {r['count']} images"))
    frames.append(FrameChecks("train_classes", train, train_checks))

    frames.append(FrameChecks("shards", facts.shards, [
        Check(E.ExpectColumnValuesToBeInSet(column="readable", value_set=[True]), "readable, [True]",
              "shards", "cannot be read", lambda r: r["problem"]),
        Check(E.ExpectColumnPairValuesToBeEqual(column_A="records", column_B="manifest_records",
                                                ignore_row_if="either_value_is_missing"),
              "records, manifest num_samples", "shards", "hold a different number of records",
              lambda r: f"{r['shard']}: {int(r['records'])} records, manifest says {r['manifest_records']}"),
    ]))

    frames.append(FrameChecks("label_counts", facts.label_counts, [
        Check(E.ExpectColumnPairValuesToBeEqual(column_A="in_shards", column_B="in_manifest"),
              "images per label in shards, class_counts", "(split, label) pairs",
              "count differently in the shards and the manifest",
              lambda r: f"{r['split']} label {r['label']}: {r['in_shards']} in shards, "
                        f"{r['in_manifest']} in manifest"),
    ]))

    if checksum_problems is not None:
        checksums = pd.DataFrame({"split": list(checksum_problems),
                                  "match": [p is None for p in checksum_problems.values()],
                                  "problem": list(checksum_problems.values())})
        frames.append(FrameChecks("checksums", checksums, [
            Check(E.ExpectColumnValuesToBeInSet(column="match", value_set=[True]), "sha256 match, [True]",
                  "splits", "have shards whose sha256 differs from the manifest",
                  lambda r: f"{r['split']}: {r['problem']}"),
        ]))

    for split, records in facts.records.items():
        where = lambda r: f"{r['shard']} #{r['position']} key {r['key']}"  # noqa: E731
        record_checks = [
            Check(E.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=K - 1),
                  f"label, 0, {K - 1}", f"sampled {split} records", "out of range",
                  lambda r: f"{r['label']} ({where(r)})"),
            Check(E.ExpectColumnPairValuesToBeEqual(column_A="label", column_B="meta_label"),
                  "cls label, json label", f"sampled {split} records", "disagree on their label",
                  lambda r: f"{r['label']} vs {r['meta_label']} ({where(r)})"),
            Check(E.ExpectColumnValuesToBeInSet(column="decoded", value_set=[True]), "decoded, [True]",
                  f"sampled {split} records", "do not decode", lambda r: f"{where(r)}: {r['error']}"),
            Check(E.ExpectColumnValuesToBeInSet(column="mode", value_set=list(IMAGE_MODES)),
                  f"mode, {list(IMAGE_MODES)}", f"sampled {split} images", "have another mode",
                  lambda r: f"{r['mode']} ({where(r)})"),
            Check(E.ExpectColumnPairValuesToBeEqual(column_A="format", column_B="expected_format",
                                                    ignore_row_if="either_value_is_missing"),
                  "format, extension", f"sampled {split} images", "are not in their extension's format",
                  lambda r: f"{r['format']} stored as .{r['ext']} ({where(r)})"),
        ]
        for side in ("width", "height"):
            record_checks.append(Check(
                E.ExpectColumnValuesToBeBetween(column=side, min_value=1), f"{side}, 1",
                f"sampled {split} images", f"have no {side}", lambda r, s=side: f"{s} {r[s]} ({where(r)})"))
        if max_short_side > 0:
            records = records.assign(short_side=records[["width", "height"]].min(axis=1))
            record_checks.append(Check(
                E.ExpectColumnValuesToBeBetween(column="short_side", max_value=max_short_side),
                f"min(width, height), None, {max_short_side}", f"sampled {split} images",
                f"have a short side above data.max_short_side {max_short_side}",
                lambda r: f"{int(r['width'])}x{int(r['height'])} ({where(r)})"))
        frames.append(FrameChecks(f"{split}_records", records, record_checks))
    return frames


def run_checks(frames: list[FrameChecks]) -> tuple[list[Failure], int]:
    """Validate every frame with its own suite; return the failures and the expectation count."""
    gx = _import_gx()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas("liftplus")
    failures: list[Failure] = []
    total = 0
    for group in frames:
        batch = source.add_dataframe_asset(group.name).add_batch_definition_whole_dataframe(group.name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"liftplus-{group.name}"))
        for index, check in enumerate(group.checks):
            check.expectation.meta = {"check": index}
            suite.add_expectation(check.expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"liftplus-{group.name}", data=batch, suite=suite))
        outcome = definition.run(batch_parameters={"dataframe": group.frame})
        total += len(group.checks)
        failed = {int(r.expectation_config.meta["check"]): r for r in outcome.results if not r.success}
        for index in sorted(failed):  # GX returns results in its own order; report in the suite's
            check, result = group.checks[index], failed[index]
            problem = _exception_message(result.exception_info)
            observed = (f"could not be evaluated: {problem}" if problem
                        else check.observed(result.result, group.frame))
            failures.append(Failure(check.title, observed))
    return failures, total


def _exception_message(info: Any) -> str | None:
    """The first exception message GX recorded for a result (its layout varies by failure)."""
    if not isinstance(info, Mapping):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message") or "").splitlines()[0]
    for value in info.values():
        message = _exception_message(value)
        if message:
            return message
    return None


def validate_shards(shard_dir: str | Path, sample_size: int, verify_checksums: bool = True,
                    max_short_side: int = 0) -> ValidationReport:
    """Validate a shard directory against the data expectations.

    Raises DataError only when there is nothing to validate (no readable manifest);
    everything else that is wrong is a :class:`Failure` in the report.
    """
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir / MANIFEST_NAME)
    checksum_problems = (
        {split: _checksum_problem(manifest, shard_dir, split) for split in manifest["splits"]}
        if verify_checksums else None
    )
    facts = read_shard_facts(manifest, shard_dir, sample_size)
    frames = build_checks(manifest, facts, checksum_problems, max_short_side)
    failures, total = run_checks(frames)
    decoded = {split: len(records) for split, records in facts.records.items()}
    return ValidationReport(manifest, failures, total, decoded)
