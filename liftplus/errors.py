"""One error type per kind of bad input, and the one-line reporting of them.

Stages and the CLI raise these for anything a user can fix. :func:`exit_on_error`
turns them into a single ``error: ...`` line on stderr and exit status 1;
``LIFTPLUS_DEBUG=1`` (or ``--debug``, which every stage accepts) re-raises for the
full traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Callable, TypeVar


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
        except (LiftplusError, FileNotFoundError, PermissionError, OSError) as exc:
            if debug_enabled() or _debug_flag_given(args, kwargs):
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, LiftplusError):
                message = f"{type(exc).__name__}: {message}"
            _close_progress_bars()
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            _close_progress_bars()
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
