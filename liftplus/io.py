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
import json
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from liftplus.errors import OutputError

WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
"""Errors that only a write can raise: when one surfaces, the output being written is the culprit."""

_TORCH_SERIALIZATION = os.path.join("torch", "serialization.py")
"""``torch.save(obj, path)`` reports a refused write as a RuntimeError from its C++ writer, raised in
this file, whose text varies ("unexpected pos 704 vs 598", "basic_ios::clear: iostream error", ...)."""


def output_error(path: str | Path, exc: BaseException) -> OutputError:
    """One line for a failed write of ``path``."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc).splitlines()[0] or type(exc).__name__
    else:
        reason = f"torch.save failed: {_first_line(exc)}; is the disk full?"
    return OutputError(f"{path}: cannot write ({reason}); nothing was written")


def _first_line(exc: BaseException) -> str:
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
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise output_error(path, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as exc:
        tmp_path.unlink(missing_ok=True)
        if _is_write_failure(exc, tmp_path, path):
            raise output_error(path, exc) from exc
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


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


def file_digest(path: str | Path, algorithm: str = "sha256", chunk_size: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | Path) -> str:
    return file_digest(path, "sha256")
