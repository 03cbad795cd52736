"""Which project source files a script can run: its import closure, read from the source.

The train stage's resume fingerprint digests the closure of the training code (an edit
of ``cli.py`` must not throw a resumable state away; an edit of the loop must), and the
dvc-deps test checks every stage's deps cover its script's closure. Imports are read
with ``ast`` (function-level and relative ones included); nothing is imported.
"""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGES = ("liftplus", "stages")
"""Top-level names whose modules belong to the project."""


def module_file(dotted: str, root: Path) -> Path | None:
    path = root.joinpath(*dotted.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, root: Path) -> set[str]:
    """Dotted names of the project modules ``path`` imports anywhere (``from a import b``: a and a.b)."""
    package = path.relative_to(root).parent.parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in PACKAGES}


def import_closure(script: Path, root: Path) -> set[str]:
    """``root``-relative paths of every project file ``script`` can reach by imports, itself included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path, root):
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
                found = module_file(".".join(parts[:depth]), root)
                if found is not None and found not in seen:
                    todo.append(found)
    return {p.relative_to(root).as_posix() for p in seen}


TRAINING_CODE = "liftplus/training/run.py"
"""Where a training run is put together: its import closure is the code a resumed state must match."""


def code_fingerprint() -> str:
    """The digest of the code that trains: a saved state is resumed only by the code that wrote it.

    DVC reruns ``train`` when its code changes; without this the saved state of the
    same params would hand back the old code's weights as if just trained. Only the
    files :data:`TRAINING_CODE` can import count, so an edit of ``cli.py`` or of the
    registry keeps a resumable state.
    """
    root = Path(__file__).resolve().parents[2]
    digest = hashlib.sha256()
    for name in sorted(import_closure(root / TRAINING_CODE, root)):
        digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]
