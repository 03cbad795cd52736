"""One error type per kind of bad input, and the one-line reporting of them.

Stages and the CLI raise these for anything a user can fix. :func:`exit_on_error`
turns them into a single ``error: ...`` line on stderr and exit status 1;
``LIFTPLUS_DEBUG=1`` (or ``--debug``, which every stage accepts) re-raises for the
full traceback.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar


class LiftplusError(Exception):
    """A problem the user can fix; its message is one line naming what and where."""


class ParamsError(LiftplusError):
    """params.yaml has an unknown key, a wrong type or an out-of-range value."""


class DataError(LiftplusError):
    """Raw data or shards are missing, corrupt or inconsistent."""


class ValidationFailed(LiftplusError):
    """A data expectation did not hold."""


class CheckpointError(LiftplusError):
    """A checkpoint is missing, corrupt, unsafe or does not match the model."""


class TrainingError(LiftplusError):
    """Training cannot continue (non-finite loss, ...)."""


class GateFailed(LiftplusError):
    """Evaluation metrics do not pass the registration gate."""


class OutputError(LiftplusError):
    """An output file could not be written (disk full, read-only, too large); nothing was left behind."""


class Stopped(BaseException):
    """SIGINT or SIGTERM arrived inside :func:`stop_on_signals`.

    A BaseException, as KeyboardInterrupt is: code that catches Exception (to name
    a file that does not decode, say) must not turn a stop into another error.
    """

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise :class:`Stopped`, so cleanup code runs.

    SIGTERM's default action ends the process on the spot, leaving its temporary
    files behind; as an exception it unwinds through every ``finally``. Signal
    handlers belong to the main thread: elsewhere the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


F = TypeVar("F", bound=Callable[..., object])


DEBUG_FLAG = "--debug"
DEBUG_HELP = "on error, show the full traceback (same as LIFTPLUS_DEBUG=1)"


def debug_enabled() -> bool:
    return os.environ.get("LIFTPLUS_DEBUG", "").lower() in {"1", "true", "yes"}


def _debug_flag_given(args: tuple, kwargs: dict) -> bool:
    """``--debug`` among a stage main's ``argv`` (or the command line when it is called without one)."""
    argv = kwargs.get("argv", args[0] if args else None)
    if not isinstance(argv, (list, tuple)):
        argv = sys.argv[1:]
    return DEBUG_FLAG in argv


def _close_progress_bars() -> None:
    """A progress bar left open by the failing code would share its line with the error: close it first."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        try:
            bar.close()
        except Exception:  # a bar whose stream is gone already: nothing left to clear
            pass


def exit_on_error(main: F) -> F:
    """Run ``main``; report a LiftplusError (or a missing file) as one line and exit 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (LiftplusError, Stopped, FileNotFoundError, PermissionError, OSError) as exc:
            if debug_enabled() or _debug_flag_given(args, kwargs):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, (LiftplusError, Stopped)):
                message = f"{type(exc).__name__}: {message}"
            _close_progress_bars()
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            _close_progress_bars()
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
