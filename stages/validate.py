"""Stage `validate`: check the shards against the data expectations, then write the
long-tail metrics and the class-count curve.

    python -m stages.validate [--params params.yaml] [--shards data/shards] [--out data/stats]

A failed expectation prints one line per failure and exits 1; nothing is written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from liftplus.data.expectations import TRAIN_SPLIT, ValidationReport, validate_shards
from liftplus.data.longtail import count_curve, longtail_metrics
from liftplus.errors import ValidationFailed, exit_on_error
from liftplus.io import csv_text, write_json, write_text
from liftplus.params import load_params
from stages import stage_parser

CURVE_COLUMNS = ("rank", "label", "class", "count")


def print_failures(report: ValidationReport, shard_dir: Path) -> None:
    print(
        f"validate: {len(report.failures)} of {report.num_expectations} expectations failed on {shard_dir}",
        file=sys.stderr,
    )
    for failure in report.failures:
        print(f"  - {failure}", file=sys.stderr)


def write_outputs(report: ValidationReport, out_dir: Path) -> tuple[Path, Path]:
    metrics_path, curve_path = out_dir / "longtail.json", out_dir / "class_counts.csv"
    train_counts = report.manifest["splits"][TRAIN_SPLIT]["class_counts"]
    write_text(curve_path, csv_text(count_curve(train_counts, report.manifest["classnames"]), CURVE_COLUMNS))
    write_json(metrics_path, longtail_metrics(report.counts_by_split(), TRAIN_SPLIT))
    return metrics_path, curve_path


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser("validate", __doc__, shards="data/shards", out="data/stats").parse_args(argv)

    params = load_params(args.params)
    started = time.perf_counter()
    report = validate_shards(
        args.shards,
        sample_size=params.validate_.sample_size,
        verify_checksums=params.validate_.verify_checksums,
        max_short_side=params.data.max_short_side,
    )
    if not report.success:
        print_failures(report, args.shards)
        raise ValidationFailed(
            f"validate: {len(report.failures)} expectation(s) failed on {args.shards}, first: {report.failures[0]}"
        )
    written = write_outputs(report, args.out)
    decoded = ", ".join(f"{split} {n}" for split, n in report.decoded.items())
    print(
        f"validate: {report.num_expectations} expectations passed on {args.shards} "
        f"(decoded {decoded}) in {time.perf_counter() - started:.1f} s; "
        f"wrote {', '.join(map(str, written))}"
    )


if __name__ == "__main__":
    main()
