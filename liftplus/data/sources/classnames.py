"""Class-name files: one name per line (ImageNet-LT, Places-LT) or iNaturalist's categories.json."""

from __future__ import annotations

import json
from pathlib import Path

from liftplus.errors import DataError


def read_classnames(path: Path) -> list[str]:
    """Names indexed by label; DataError naming the file for empty or duplicate names."""
    if path.suffix == ".json":
        return _read_categories_json(path)
    return _read_lines(path)


def read_text(path: Path, what: str) -> str:
    """A text file's content; a UTF-8 byte-order mark (Windows editors write one) is not part of it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: cannot read {what}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at position {exc.start})"
        ) from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} ({_reason(exc)})") from None


def _read_lines(path: Path) -> list[str]:
    lines = read_text(path, "class names").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    names = []
    for number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            raise DataError(f"{path}:{number}: empty class name")
        names.append(name)
    return _unique(names, path, lambda i: f"{path}:{i + 1}")


def _read_categories_json(path: Path) -> list[str]:
    text = read_text(path, "categories")
    try:
        categories = json.loads(text)
    except json.JSONDecodeError as exc:
        reason = _reason(exc)
        raise DataError(f"{path}: not a readable JSON list of categories ({reason})") from None
    if not isinstance(categories, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), int) and isinstance(c.get("name"), str)
        for c in categories
    ):
        raise DataError(f'{path}: expected a list of {{"id": int, "name": str}} objects')
    by_id = sorted(categories, key=lambda c: c["id"])
    ids = [c["id"] for c in by_id]
    if ids != list(range(len(by_id))):
        raise DataError(f"{path}: category ids must be 0..{len(by_id) - 1}, each once")
    names = [c["name"].strip() for c in by_id]
    return _unique(names, path, lambda i: f"{path} id {i}")


def _unique(names: list[str], path: Path, where) -> list[str]:
    if not names:
        raise DataError(f"{path}: no class names")
    first_seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in first_seen:
            first = where(first_seen[name])
            raise DataError(f"{where(index)}: duplicate class name {name!r} (first at {first})")
        first_seen[name] = index
    return names


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
