"""Stage ``shard``: raw dataset → ``data/shards/{split}-%06d.tar`` + ``manifest.json``.

Everything is written into a temporary sibling folder that replaces the
output folder only when all splits and the manifest are complete.
"""

from __future__ import annotations

import time
from pathlib import Path

from liftplus.data.shard_writer import atomic_directory
from liftplus.data.sharding import shard_source
from liftplus.data.sources import open_source
from liftplus.errors import OutputError, Stopped, exit_on_error, stop_on_signals
from liftplus.io import WRITE_ERRNOS
from liftplus.locks import output_lock
from liftplus.params import load_params
from stages import stage_parser


def summary_lines(manifest: dict) -> list[str]:
    """Per split: samples, shards, classes present and files skipped (not images, not
    regular files, folders already read, images that do not decode), then the hold-out."""
    lines = [f"{manifest['source']}: {manifest['num_classes']} classes"]
    for split, entry in manifest["splits"].items():
        present = sum(1 for count in entry["class_counts"] if count)
        skipped = f", {len(entry['skipped'])} skipped (listed in the manifest)" if entry["skipped"] else ""
        lines.append(
            f"  {split}: {entry['num_samples']} samples in {len(entry['shards'])} shard(s), "
            f"{present} classes present{skipped}"
        )
    holdout = manifest.get("holdout")
    if holdout:
        lines.append(
            f"  {holdout['split']} held out of {holdout['from']}: {holdout['fraction']:g} of each class "
            f"(seed {holdout['seed']})"
        )
    return lines


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser("shard", __doc__, out="data/shards").parse_args(argv)

    data = load_params(args.params).data
    started = time.perf_counter()
    with output_lock(args.out, "shard"):
        manifest = write_shards(data, args.out)
    for line in summary_lines(manifest):
        print(line)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


def write_shards(data, out: Path) -> dict:
    """The source's shards and manifest into ``out`` as one folder swap; the manifest.

    SIGINT or SIGTERM while writing stops it cleanly: the temporary folder is removed.
    """
    source = open_source(data)
    as_it_was = f"nothing was written, {out} is as it was before"
    try:
        with atomic_directory(out) as tmp, stop_on_signals():
            return shard_source(source, data.source, tmp, data.shard_max_samples, data.shard_max_bytes, data.store)
    except Stopped as exc:
        raise OutputError(f"shard: stopped by signal {exc.signum}; {as_it_was}") from None
    except (OSError, OutputError) as exc:
        refused = exc.__cause__ if isinstance(exc, OutputError) else exc  # the manifest's write
        if not isinstance(refused, OSError) or refused.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(f"{out}: cannot write shards ({refused.strerror}); {as_it_was}") from exc


if __name__ == "__main__":
    main()
