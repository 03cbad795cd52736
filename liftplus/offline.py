"""The environment switches that keep DVC, Prefect and great-expectations from calling home.

They live in one file, ``liftplus/offline.env``, which the Makefile exports too; Python
code applies them with :func:`apply` (a value the user set is kept) or adds them to a
child process's environment with :func:`environment`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from importlib import resources


def switches() -> dict[str, str]:
    """``offline.env``'s ``NAME=value`` lines."""
    text = resources.files("liftplus").joinpath("offline.env").read_text(encoding="utf-8")
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {name.strip(): value.strip() for name, value in pairs}


def apply(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set every switch the environment does not set already (before prefect or dvc is imported)."""
    for name, value in switches().items():
        environ.setdefault(name, value)


def environment(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """A copy of ``base`` (default: this process's environment) with every switch on, then ``extra``."""
    env = dict(os.environ if base is None else base)
    env.update(switches())
    env.update(extra)
    return env
