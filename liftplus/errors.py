"""One error type per kind of bad input, and the one-line reporting of them.

Stages and the CLI raise these for anything a user can fix. :func:`exit_on_error`
turns them into a single ``error: ...`` line on stderr and exit status 1;
``LIFTPLUS_DEBUG=1`` (or ``--debug``) re-raises for the full traceback.
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


F = TypeVar("F", bound=Callable[..., object])


def debug_enabled() -> bool:
    return os.environ.get("LIFTPLUS_DEBUG", "").lower() in {"1", "true", "yes"}


def exit_on_error(main: F) -> F:
    """Run ``main``; report a LiftplusError (or a missing file) as one line and exit 1."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (LiftplusError, FileNotFoundError, PermissionError, OSError) as exc:
            if debug_enabled():
                raise
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if not isinstance(exc, LiftplusError):
                message = f"{type(exc).__name__}: {message}"
            print(f"error: {message}", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]
