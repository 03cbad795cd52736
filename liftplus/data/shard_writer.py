"""Writing WebDataset shards reproducibly, and replacing a shard folder as one piece.

A sample is three tar members, ``{key}.cls`` (decimal label), ``{key}.json``
(``{"label": ..., "source": ...}``) and ``{key}.png``, ``{key}.jpg`` or ``{key}.npy`` (decoded pixels), written
by webdataset's TarWriter with a fixed mtime, owner and mode and in a fixed
member order, so the same records always give byte-identical tars;
:mod:`liftplus.data.shard_reader` reads them back.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from liftplus.data.shard_reader import END_OF_ARCHIVE, IMAGE_EXTS
from liftplus.data.sources import Record
from liftplus.errors import DataError
from liftplus.io import sha256_file

SHARD_PATTERN = "{split}-%06d.tar"
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_TAR_OWNER = "liftplus"


def shard_name(split: str, index: int) -> str:
    return SHARD_PATTERN.format(split=split) % index


def _member_bytes(size: int) -> int:
    return _BLOCK + -(-size // _BLOCK) * _BLOCK


def _tar_bytes(members_bytes: int) -> int:
    """Size of a finished tar whose members take ``members_bytes`` (end marker + record padding)."""
    return -(-(members_bytes + END_OF_ARCHIVE) // _RECORD) * _RECORD


def sample_members(record: Record) -> dict[str, Any]:
    if "." in record.key or "/" in record.key or not record.key:
        raise DataError(f"{record.source}: key {record.key!r} is not a valid tar member stem")
    if record.ext not in IMAGE_EXTS:
        raise DataError(f"{record.source}: image extension {record.ext!r} is not png, jpg or npy")
    meta = {"label": record.label, "source": record.source}
    return {
        "__key__": record.key,
        record.ext: record.image,
        "cls": str(record.label).encode("ascii"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
    }


class _Shard:
    def __init__(self, path: Path):
        from webdataset import TarWriter  # imports torch (seconds): only when writing

        self.path = path
        self.file = open(path, "wb")
        self.writer = TarWriter(
            self.file, user=_TAR_OWNER, group=_TAR_OWNER, mode=0o444, mtime=0, encoder=False
        )
        self.num_samples = 0
        self.members_bytes = 0

    def abandon(self) -> None:
        """Close after an error; the caller throws the partial file away with its folder."""
        try:
            self.writer.close()
        finally:
            self.file.close()

    def close(self) -> dict[str, Any]:
        self.writer.close()
        self.file.close()
        return {
            "name": self.path.name,
            "sha256": sha256_file(self.path),
            "num_samples": self.num_samples,
            "bytes": self.path.stat().st_size,
        }


def write_split_shards(
    records: Iterable[Record], out_dir: str | Path, split: str, max_samples: int, max_bytes: int
) -> list[dict[str, Any]]:
    """Write ``records`` as ``{split}-000000.tar``, ... ; one entry per shard for the manifest.

    A shard holds at most ``max_samples`` samples and ``max_bytes`` bytes (a
    single sample larger than that gets a shard of its own). No records, no shard.
    """
    out_dir = Path(out_dir)
    shards: list[dict[str, Any]] = []
    current: _Shard | None = None
    try:
        for record in records:
            members = sample_members(record)
            sample_bytes = sum(_member_bytes(len(v)) for k, v in members.items() if k != "__key__")
            if current is not None and (
                current.num_samples >= max_samples
                or _tar_bytes(current.members_bytes + sample_bytes) > max_bytes
            ):
                shards.append(current.close())
                current = None
            if current is None:
                current = _Shard(out_dir / shard_name(split, len(shards)))
            current.writer.write(members)
            current.num_samples += 1
            current.members_bytes += sample_bytes
        if current is not None:
            shards.append(current.close())
            current = None
    finally:
        if current is not None:
            current.abandon()
    return shards


TEMP_KINDS = ("tmp", "old")
"""``atomic_directory`` writes into ``.<name>.tmp-<pid>-XXXX`` and moves the previous output
aside into ``.<name>.old-<pid>-XXXX``; the PID says whether their owner still runs."""


def _temp_prefix(final: Path, kind: str) -> str:
    return f".{final.name}.{kind}-"


def _make_temp(final: Path, kind: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(final, kind)}{os.getpid()}-", dir=final.parent))


def _owner_pid(name: str, prefix: str) -> int | None:
    """The PID in ``<prefix><pid>-XXXX``; None for a name without one (made by an older version)."""
    pid, separator, _ = name[len(prefix):].partition("-")
    return int(pid) if separator and pid.isdigit() and int(pid) > 0 else None


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(final: str | Path) -> None:
    """Remove the temporary siblings of ``final`` whose owner is gone (killed, power cut).

    A folder of a run still in progress (its PID alive) is left alone.
    """
    final = Path(final)
    for kind in TEMP_KINDS:
        prefix = _temp_prefix(final, kind)
        for path in final.parent.glob(f"{glob.escape(prefix)}*"):
            pid = _owner_pid(path.name, prefix)
            if pid is not None and not _is_running(pid):
                shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield an empty temporary sibling of ``final``; on success it replaces ``final``.

    On any error the temporary folder is removed and ``final`` is left as it was;
    what a killed run left behind is removed by the next one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = _make_temp(final, "tmp")
    tmp.chmod(0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists() or final.is_symlink():
        old = _make_temp(final, "old")
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
