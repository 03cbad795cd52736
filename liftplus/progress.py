"""Progress that a user sees wherever the output goes.

On a terminal it is a tqdm bar, redrawn in place. Anywhere else (DVC's queue,
Prefect, CI, ``nohup``) a bar shows nothing until it ends, so a long epoch or a
long shard run looks hung: there :class:`Progress` prints a plain line to
stdout instead, the first after ``FIRST_SECONDS`` and then one every
``LIFTPLUS_PROGRESS_SECONDS`` (default 30; 0 turns the lines off), each flushed
at once so a log file or a pipe gets it while the work goes on.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Optional, TextIO

from tqdm import tqdm

SECONDS_ENV = "LIFTPLUS_PROGRESS_SECONDS"
DEFAULT_SECONDS = 30.0
FIRST_SECONDS = 10.0
"""The first line comes sooner than the others: a user checking a fresh log wants to see it move."""


def line_interval() -> float:
    """Seconds between plain progress lines, from ``LIFTPLUS_PROGRESS_SECONDS`` (0: no lines)."""
    value = os.environ.get(SECONDS_ENV, "").strip()
    try:
        return max(float(value), 0.0) if value else DEFAULT_SECONDS
    except ValueError:
        return DEFAULT_SECONDS


def clock_text(seconds: float) -> str:
    """``0:04:10``: hours, minutes, seconds."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def eta_text(remaining: Optional[float], rate: float) -> str:
    """The time ``remaining`` units take at ``rate`` units a second; ``?`` when either is unknown."""
    if remaining is None or rate <= 0:
        return "?"
    return clock_text(remaining / rate)


class Progress:
    """A counter of work done, shown as a tqdm bar on a terminal or as plain lines elsewhere.

    ``update(n, line=..., **postfix)`` adds ``n`` units; the bar shows ``postfix``,
    the plain output calls ``line()`` when a line is due (so it costs nothing
    in between). ``terminal`` None asks whether stderr, where tqdm draws, is a
    terminal. ``enabled`` False shows nothing at all (a non-main rank, a test).
    """

    def __init__(
        self,
        desc: str,
        total: Optional[int] = None,
        initial: int = 0,
        *,
        unit: str = "it",
        enabled: bool = True,
        terminal: Optional[bool] = None,
        stream: Optional[TextIO] = None,
        clock: Optional[Callable[[], float]] = None,
        interval: Optional[float] = None,
    ):
        self.total, self.count, self.initial = total, initial, initial
        self.clock = clock or time.monotonic
        self.started = self.clock()
        self.interval = line_interval() if interval is None else interval
        self.next_line_at = self.started + min(FIRST_SECONDS, self.interval)
        self.stream = stream
        if terminal is None:
            terminal = sys.stderr.isatty()
        self.bar = None
        if enabled and terminal:
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, mininterval=1.0, leave=False)
        self.lines = enabled and not terminal and self.interval > 0

    @property
    def elapsed(self) -> float:
        return self.clock() - self.started

    def rate(self, done: Optional[float] = None) -> float:
        """Units (or ``done`` of something else) a second since this progress started."""
        done = self.count - self.initial if done is None else done
        return done / max(self.elapsed, 1e-9)

    def eta(self) -> str:
        """Time left at the rate so far; ``?`` when the total is unknown."""
        remaining = None if self.total is None else self.total - self.count
        return eta_text(remaining, self.rate())

    def update(self, n: int = 1, line: Optional[Callable[[], str]] = None, **postfix: str) -> None:
        self.count += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        elif self.lines and line is not None and self.clock() >= self.next_line_at:
            print(line(), file=self.stream or sys.stdout, flush=True)
            self.next_line_at = self.clock() + self.interval

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
