"""Atomic file output and checksums: no stage ever leaves a half-written file.

A write that the system refuses (disk full, quota, file size limit, read-only
file system) becomes one :class:`~liftplus.errors.OutputError` line naming the
output, and the temporary file is removed, so the previous output (if any) is
left exactly as it was.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import secrets
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from liftplus.errors import CheckpointError, OutputError

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""Errors that only a write can raise: when one surfaces, the output being written is the culprit."""

_TORCH_SERIALIZATION = os.path.join("torch", "serialization.py")
"""``torch.save(obj, path)`` reports a refused write as a RuntimeError from its C++ writer, raised in
this file, whose text varies ("unexpected pos 704 vs 598", "basic_ios::clear: iostream error", ...)."""


def output_error(path: str | Path, exc: BaseException) -> OutputError:
    """One line for a failed write of ``path``."""
    if isinstance(exc, OSError):
        reason = error_reason(exc)
    else:
        reason = f"torch.save failed: {error_reason(exc)}; is the disk full?"
    return OutputError(f"{path}: cannot write ({reason}); nothing was written")


def error_reason(exc: BaseException) -> str:
    """What went wrong, in a few words: the system's text for an OSError (its file is named apart)."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _is_write_failure(exc: BaseException, *paths: Path) -> bool:
    if isinstance(exc, OSError):
        about_other_file = exc.filename is not None and str(exc.filename) not in {str(p) for p in paths}
        return not about_other_file or exc.errno in WRITE_ERRNOS
    return isinstance(exc, RuntimeError) and _raised_in(exc, _TORCH_SERIALIZATION)


def _raised_in(exc: BaseException, file_suffix: str) -> bool:
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and frame.tb_frame.f_code.co_filename.endswith(file_suffix)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only on success.

    On any error the temporary file is removed; a refused write (see
    :data:`WRITE_ERRNOS`, or torch's zip writer failing) is re-raised as an
    :class:`OutputError` naming ``path``.
    """
    with atomic_paths(path) as (tmp,):
        yield tmp


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """:func:`atomic_path` for a set of files that must change together: all of them, or none.

    Every file is written to its temporary name first; only when the block has
    succeeded are they renamed into place, and a rename that fails puts back the
    files already replaced. On any error every temporary is removed.
    """
    paths = [Path(p) for p in paths]
    tmps: list[Path] = []
    try:
        for path in paths:
            tmps.append(_temp_beside(path))
        yield list(tmps)
        _replace_all(tmps, paths)
    except BaseException as exc:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        failed = _failed_output(exc, tmps, paths)
        if failed is not None:
            raise output_error(failed, exc) from exc
        raise


def _temp_beside(path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from exc
    os.close(fd)
    return Path(tmp)


def _failed_output(exc: BaseException, tmps: list[Path], paths: list[Path]) -> str | Path | None:
    """The output a refused write belongs to, or None when ``exc`` is no refused write of ours."""
    if isinstance(exc, OutputError) or not _is_write_failure(exc, *tmps, *paths):
        return None
    filename = str(getattr(exc, "filename", None))
    for tmp, path in zip(tmps, paths):
        if filename in (str(tmp), str(path)):
            return path
    return paths[0] if len(paths) == 1 else ", ".join(map(str, paths))


def _replace_all(tmps: list[Path], paths: list[Path]) -> None:
    """Rename each temporary onto its path; when one rename fails, put back the ones before it."""
    mode = 0o666 & ~_umask()
    for tmp in tmps:
        if tmp.exists():
            os.chmod(tmp, mode)
    if len(paths) == 1:  # one rename is atomic already
        os.replace(tmps[0], paths[0])
        return
    backups: list[Path | None] = []
    try:
        for path in paths:
            backups.append(_backup(path))
        _replace_or_undo(tmps, paths, backups)
    finally:
        for backup in backups:
            if backup is not None:
                backup.unlink(missing_ok=True)


def _replace_or_undo(tmps: list[Path], paths: list[Path], backups: list[Path | None]) -> None:
    replaced: list[tuple[Path, Path | None]] = []
    try:
        for tmp, path, backup in zip(tmps, paths, backups):
            os.replace(tmp, path)
            replaced.append((path, backup))
    except BaseException:
        for path, backup in reversed(replaced):
            _put_back(path, backup)
        raise


def _backup(path: Path) -> Path | None:
    """A second name (hard link) for the current ``path``, to put it back; None when there is none."""
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
    if not path.exists():
        return None
    while True:
        backup = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.link(path, backup)
            return backup
        except FileExistsError:
            continue


def _put_back(path: Path, backup: Path | None) -> None:
    if backup is None:
        path.unlink(missing_ok=True)
    else:
        os.replace(backup, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_text(obj: Any) -> str:
    """How every JSON output is written: indented, keys in their order, a final newline."""
    return json.dumps(obj, indent=2, sort_keys=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json_text(obj))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_texts(texts: Mapping[str | Path, str]) -> None:
    """Write several text files as one set (:func:`atomic_paths`): a failure leaves every previous file as it was."""
    with atomic_paths(*texts) as tmps:
        for tmp, text in zip(tmps, texts.values()):
            try:
                tmp.write_text(text)
            except OSError as exc:  # a refused write() names no file: it is this one
                exc.filename = exc.filename or str(tmp)
                raise


class _WriteRecorder:
    """A binary file that remembers the OSError of a refused write.

    ``torch.save`` turns any error of the file it writes to into an opaque
    RuntimeError; this keeps the real reason (e.g. "No space left on device").
    """

    def __init__(self, file: BinaryIO):
        self.file = file
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        try:
            self.file.flush()
        except OSError as exc:
            self.error = exc
            raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically; a refused write is one OutputError line naming ``path``."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        recorder = _WriteRecorder(f)
        try:
            torch.save(obj, recorder)
            recorder.flush()
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise


def load_torch(path: str | Path, what: str, then: str = "") -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: the one way the project reads a torch file.

    A file holding pickled objects other than tensors and plain types is refused
    before any of it runs; one that is no torch file is a one-line CheckpointError
    naming ``path`` and ``what`` it should have been (``then``: what to do about it).
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's text for it suggests weights_only=False: never here
        if "GLOBAL" not in str(exc).upper():  # bytes that are no pickle at all, not a refused object
            raise CheckpointError(f"{path}: corrupt or not a {what} (not a torch file){then}") from None
        raise CheckpointError(
            f"{path}: refused, holds objects other than tensors and plain types (weights_only load)"
        ) from None
    except Exception as exc:  # RuntimeError, EOFError, IndexError, zip errors... on bytes that are no torch file
        raise CheckpointError(f"{path}: corrupt or not a {what} ({error_reason(exc)}){then}") from None


def csv_text(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The CSV of ``rows`` (dicts) with a header: ``columns``, or the first row's keys."""
    import csv

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns or (rows[0] if rows else ["empty"])), lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def file_digest(path: str | Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")


def is_checkpoint_file(pretrained: str) -> bool:
    """True when ``pretrained`` names a regular file, False when it reads as a tag, not a path;
    a path that is missing or not a regular file is a CheckpointError."""
    path = Path(pretrained)
    if path.is_file():
        return True
    if path.exists():
        raise CheckpointError(f"{pretrained}: backbone checkpoint is not a regular file")
    if os.sep in pretrained or path.suffix in {".pt", ".pth", ".bin", ".safetensors"}:
        raise CheckpointError(f"{pretrained}: backbone checkpoint file not found")
    return False
