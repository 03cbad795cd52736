"""One stage run per output at a time: an exclusive lock file beside the output.

``dvc repro`` locks the outputs of the stages it runs, but ``python -m stages.<name>``
run twice by hand (or by two schedulers) would not notice: both would write the
same output, each with its own params. :func:`output_lock` makes the second run
fail at once with one line naming the output and the PID holding it.

The lock is ``flock`` on ``.<output name>.lock`` in the output's folder: the kernel
drops it when its process ends, however it ends, so a killed run never leaves a
stale lock. The file is removed when the run finishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from liftplus.errors import OutputError
from liftplus.io import output_error

_ATTEMPTS = 5
"""Tries to lock a lock file that its previous holder removed between our open and our lock."""


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.parent / f".{output.name}.lock"


def is_first_rank() -> bool:
    """True unless this is a torchrun process other than rank 0 (only rank 0 writes outputs)."""
    return os.environ.get("RANK", "0") in ("", "0")


@contextlib.contextmanager
def output_lock(output: str | Path, stage: str) -> Iterator[None]:
    """Hold ``output``'s lock for the block; OutputError at once when another process holds it.

    Under torchrun only rank 0 takes it, so the ranks of one run never wait on each
    other. A file system without locks (``flock`` refused) runs the block unlocked.
    """
    if not is_first_rank():
        yield
        return
    output = Path(output)
    path = lock_path(output)
    made = _make_folders(path.parent, output)
    try:
        fd = _acquire(path, output, stage)
        try:
            yield
        finally:
            _release(fd, path)
    finally:
        _remove_if_empty(made)


def _make_folders(folder: Path, output: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise output_error(output, exc) from exc
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """A run that failed leaves no folder it made just for its lock."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # holds something (the output, another run's lock): keep it
            return


def _acquire(path: Path, output: Path, stage: str) -> int | None:
    """The descriptor of the locked ``path`` (None where locks are unsupported); OutputError when busy."""
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise output_error(output, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_pid(fd)
            os.close(fd)
            running = f"another {stage} stage is running" + (f" (pid {holder})" if holder else "")
            raise OutputError(f"{output}: {running}; wait for it to finish") from None
        except OSError:
            os.close(fd)
            return None
        if _still_named(fd, path):
            _write_pid(fd)
            return fd
        os.close(fd)  # its holder finished and removed it after our open: lock the new file
    raise OutputError(f"{path}: cannot lock the {stage} stage's output; is another run starting and stopping?")


def _still_named(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write_pid(fd: int) -> None:
    """Best effort: the PID only makes the other run's message more useful."""
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def _holder_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def _release(fd: int | None, path: Path) -> None:
    """Remove the lock file while still holding it, then let go."""
    if fd is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()
    os.close(fd)
