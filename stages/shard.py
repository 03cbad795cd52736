"""Stage ``shard``: raw dataset → ``data/shards/{split}-%06d.tar`` + ``manifest.json``.

Everything is written into a temporary sibling folder that replaces the
output folder only when all splits and the manifest are complete.
"""

from __future__ import annotations

import time

from liftplus.data.shards import atomic_directory
from liftplus.data.sharding import shard_source
from liftplus.data.sources import open_source
from liftplus.errors import OutputError, exit_on_error
from liftplus.io import WRITE_ERRNOS
from liftplus.params import load_params
from stages import stage_parser


def summary_lines(manifest: dict) -> list[str]:
    lines = [f"{manifest['source']}: {manifest['num_classes']} classes"]
    for split, entry in manifest["splits"].items():
        present = sum(1 for count in entry["class_counts"] if count)
        skipped = f", {len(entry['skipped'])} skipped" if entry["skipped"] else ""
        lines.append(
            f"  {split}: {entry['num_samples']} samples in {len(entry['shards'])} shard(s), "
            f"{present} classes present{skipped}"
        )
    return lines


@exit_on_error
def main(argv: list[str] | None = None) -> None:
    args = stage_parser("shard", __doc__, out="data/shards").parse_args(argv)

    data = load_params(args.params).data
    started = time.perf_counter()
    source = open_source(data)
    try:
        with atomic_directory(args.out) as tmp:
            manifest = shard_source(
                source, data.source, tmp, data.shard_max_samples, data.shard_max_bytes, data.store
            )
    except (OSError, OutputError) as exc:
        refused = exc.__cause__ if isinstance(exc, OutputError) else exc  # the manifest's write
        if not isinstance(refused, OSError) or refused.errno not in WRITE_ERRNOS:
            raise
        raise OutputError(
            f"{args.out}: cannot write shards ({refused.strerror}); nothing was written, "
            f"{args.out} is as it was before"
        ) from exc
    for line in summary_lines(manifest):
        print(line)
    print(f"wrote {args.out} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
