"""Presets: partial params files (``presets/<name>.yaml``) that reproduce the reference's main runs.

A preset holds only the keys it sets, in params.yaml's two-level section layout; its first
line, ``# <description>``, describes it. It is used two ways:

* :func:`set_args` renders it as ``-S key=value`` arguments for ``dvc exp run`` (DVC parses
  them with Hydra's override grammar: values that would not come back as the same string are
  single-quoted for Hydra, and every argument is quoted for a POSIX shell);
* :func:`apply_preset` writes its values into params.yaml in place, replacing only the value
  of each key it sets and keeping every comment and every other line byte for byte, after the
  result has passed :func:`liftplus.params.load_params`.

A value :data:`PLACEHOLDER` (``data.root``: the dataset's folder, which only the user knows)
must be replaced (``--root``) before either use.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from liftplus.errors import ParamsError
from liftplus.params import _read_yaml, load_params, parse_params

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
"""The repository's ``presets/`` folder (beside the package: liftplus runs from its checkout)."""

PLACEHOLDER = "REQUIRED"
"""A preset value the user must set: ``liftplus preset NAME --root PATH``."""

_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
_SECTION_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):(?:[ \t]+(.*))?$")
_KEY_LINE = re.compile(r"([ \t]+)([A-Za-z_][A-Za-z0-9_-]*):(?=[ \t]|$)(.*)$")
_HYDRA_PLAIN = re.compile(r"[A-Za-z_/][A-Za-z0-9_/.+-]*")
_HYDRA_KEYWORDS = {"true", "false", "null", "none", "nan", "inf", "infinity"}


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    description: str
    values: dict[str, Any]
    """Flat ``section.key`` → value, in the file's order."""
    comments: dict[str, str]
    """Flat ``section.key`` → the comment on its line in the preset (without ``#``), where it has one."""


def preset_names(directory: Path = PRESETS_DIR) -> list[str]:
    if not directory.is_dir():
        raise ParamsError(f"{directory}: presets folder not found")
    names = [p.stem for p in directory.glob("*.yaml") if _NAME.fullmatch(p.stem)]
    return sorted(names, key=lambda n: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", n)])


def load_preset(name: str, directory: Path = PRESETS_DIR) -> Preset:
    """The preset ``name``; ParamsError for an unknown name or a preset that is not a valid partial params file."""
    names = preset_names(directory)
    if name not in names:
        shown = name if len(name) <= 60 and name.isprintable() else repr(name[:60])
        raise ParamsError(f"unknown preset '{shown}'; presets: {', '.join(names) or 'none'}")
    path = directory / f"{name}.yaml"
    raw = _read_yaml(path)  # first: it names a file that is not UTF-8, bad YAML or a key written twice
    text = path.read_text(encoding="utf-8")
    first = text.split("\n")[0]
    if not first.startswith("# ") or not first[2:].strip():
        raise ParamsError(f"{path}: the first line must be '# <one-line description>'")
    if not isinstance(raw, dict) or not raw:
        raise ParamsError(f"{path}: expected a mapping of params sections")
    values: dict[str, Any] = {}
    for section, keys in raw.items():
        if not isinstance(keys, dict) or not keys:
            raise ParamsError(f"{path}: section '{section}' must map keys to values")
        for key, value in keys.items():
            if isinstance(value, (dict, list)):
                raise ParamsError(f"{path}: '{section}.{key}' must be a single value")
            values[f"{section}.{key}"] = value
    parse_params(raw, str(path))  # unknown keys, wrong types, out-of-range values
    return Preset(name, path, first[2:].strip(), values, _line_comments(text))


def _bodies(text: str) -> tuple[list[str], list[str]]:
    """``text`` cut at each newline (and nothing else: str.splitlines also cuts at form feeds and more),
    and each piece without its carriage return."""
    parts = text.split("\n")
    return parts, [part[:-1] if part.endswith("\r") else part for part in parts]


def _line_comments(text: str) -> dict[str, str]:
    comments = {}
    for found in _scan(_bodies(text)[1]):
        if found.comment:
            comments[found.dotted] = found.comment.lstrip("#").strip()
    return comments


def with_root(preset: Preset, root: str | None) -> dict[str, Any]:
    """The preset's values with ``data.root`` set to ``root`` (when given); ParamsError while a placeholder is left."""
    values = dict(preset.values)
    if root is not None:
        if not root.strip():
            raise ParamsError("--root is empty; give the dataset's folder")
        values["data.root"] = root
    for dotted, value in values.items():
        if value == PLACEHOLDER:
            hint = preset.comments.get(dotted)
            what = f": {hint}" if hint else ""
            option = "--root PATH" if dotted == "data.root" else f"{dotted} in {preset.path}"
            raise ParamsError(f"preset {preset.name}: {dotted} is the placeholder {PLACEHOLDER}; set {option}{what}")
    return values


# ---------------------------------------------------------------- rendering values


def yaml_scalar(value: Any) -> str:
    """``value`` as a one-line YAML scalar that PyYAML's safe loader reads back as ``value``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ParamsError(f"{value!r} is not a finite number")
        text = repr(value)
        if "e" in text and "." not in text:  # YAML 1.1 reads 1e-05 as a string, 1.0e-05 as a float
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        if plain and value == value.strip() and "\n" not in value and not re.search(r"^[\"'#&*!|>%@`]|: | #", value):
            return value
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a double-quoted YAML scalar
    raise ParamsError(f"{value!r}: not a scalar params value")


def hydra_value(value: Any) -> str:
    """``value`` as the value of a Hydra override (``dvc exp run -S key=VALUE``) that parses back to it."""
    if value is None or isinstance(value, (bool, int, float)):
        return yaml_scalar(value)
    if not isinstance(value, str):
        raise ParamsError(f"{value!r}: not a scalar params value")
    if "${" in value:
        # DVC resolves OmegaConf interpolations in -S values, quoted or not
        raise ParamsError(
            f"{value[:60]!r}: '${{' in a value cannot pass through dvc exp run -S; write it with the preset command"
        )
    if _HYDRA_PLAIN.fullmatch(value) and value.lower() not in _HYDRA_KEYWORDS:
        return value
    # Hydra's quoted string: \' is a quote; backslashes are literal except before a quote or at the end
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return f"'{escaped}'"


def set_args(values: dict[str, Any]) -> list[str]:
    """``["-S", "key=value", ...]`` for ``dvc exp run``."""
    args: list[str] = []
    for dotted, value in values.items():
        args += ["-S", f"{dotted}={hydra_value(value)}"]
    return args


def shell_line(args: list[str]) -> str:
    return " ".join(shlex.quote(arg) for arg in args)


# ---------------------------------------------------------------- params.yaml in place


@dataclass(frozen=True)
class _KeyLine:
    index: int
    dotted: str
    prefix: str
    """The line up to and including the colon: ``  key:``."""
    value: str
    comment: str
    comment_column: int


def _split_comment(rest: str) -> tuple[str, str]:
    """``(value part, comment)`` of the text after a key's colon; a ``#`` inside quotes is not a comment."""
    quote = None
    i = 0
    while i < len(rest):
        char = rest[i]
        if quote == '"':
            if char == "\\":
                i += 2
                continue
            if char == '"':
                quote = None
        elif quote == "'":
            if char == "'":
                if rest[i + 1 : i + 2] == "'":
                    i += 2
                    continue
                quote = None
        elif char in "\"'" and not rest[:i].strip():
            quote = char
        elif char == "#" and (i == 0 or rest[i - 1] in " \t"):
            return rest[:i], rest[i:]
        i += 1
    return rest, ""


def _scan(lines: list[str]) -> list[_KeyLine]:
    """Every ``  key: value  # comment`` line under a ``section:`` line (line endings stripped)."""
    found = []
    section: str | None = None
    indent: str | None = None
    for index, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0] not in " \t":
            match = _SECTION_LINE.match(line)
            inline = match and match.group(2) and not match.group(2).lstrip().startswith("#")
            section, indent = (match.group(1), None) if match and not inline else (None, None)
            continue
        match = _KEY_LINE.match(line)
        if section is None or match is None:
            continue
        if indent is None:
            indent = match.group(1)
        if match.group(1) != indent:
            continue  # deeper than the section's keys
        value, comment = _split_comment(match.group(3))
        prefix = match.group(1) + match.group(2) + ":"
        found.append(
            _KeyLine(index, f"{section}.{match.group(2)}", prefix, value.strip(), comment, len(prefix) + len(value))
        )
    return found


def _same_value(text: str, value: Any) -> bool:
    try:
        old = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return False
    return type(old) is type(value) and old == value


def update_params_text(text: str, values: dict[str, Any], source: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``text`` with the value of each ``section.key`` in ``values`` replaced; every other byte kept.

    Returns the new text and ``(key, old value text, new value text)`` for each line that changed.
    ParamsError for a key the file does not hold on one line of its own.
    """
    lines, bodies = _bodies(text)
    by_key: dict[str, list[_KeyLine]] = {}
    for found in _scan(bodies):
        by_key.setdefault(found.dotted, []).append(found)
    changes = []
    for dotted, value in values.items():
        where = by_key.get(dotted, [])
        if not where:
            raise ParamsError(
                f"{source}: no line '{dotted.split('.', 1)[1]}: ...' under '{dotted.split('.')[0]}:' "
                f"to set {dotted}; add the key (see the repository's params.yaml)"
            )
        if len(where) > 1:
            raise ParamsError(
                f"{source}: '{dotted}' is written twice (lines {where[0].index + 1} and {where[1].index + 1})"
            )
        found = where[0]
        if not found.value:
            raise ParamsError(
                f"{source}:{found.index + 1}: '{dotted}' has no value on its line; write it as 'key: value'"
            )
        if _same_value(found.value, value):
            continue
        new_value = yaml_scalar(value)
        line = f"{found.prefix} {new_value}"
        if found.comment:
            gap = max(found.comment_column - len(line), 2)  # the comment stays in its column, or 2 spaces on
            line = line + " " * gap + found.comment
        lines[found.index] = line + lines[found.index][len(bodies[found.index]) :]
        changes.append((dotted, found.value, new_value))
    return "\n".join(lines), changes


def apply_preset(params_path: Path, values: dict[str, Any], label: str) -> list[tuple[str, str, str]]:
    """Write ``values`` into ``params_path`` in place, atomically, only if the result validates.

    Returns the changed lines as :func:`update_params_text` does; with none, the file is not touched.
    """
    from liftplus.io import atomic_path

    new_text, changes = updated_text(params_path, values, label)
    if not changes:
        return changes
    with atomic_path(params_path) as tmp:
        tmp.write_bytes(new_text.encode("utf-8"))
        _validate(tmp, values, f"{params_path} with {label}")
    return changes


def updated_text(params_path: Path, values: dict[str, Any], label: str) -> tuple[str, list[tuple[str, str, str]]]:
    """The text ``params_path`` would hold with ``values`` written in, checked by :func:`load_params` on a copy."""
    load_params(params_path)  # the file as it is must be valid first: errors name it, not a temp copy
    text = params_path.read_bytes().decode("utf-8")
    new_text, changes = update_params_text(text, values, str(params_path))
    return new_text, changes


def check_params(params_path: Path, values: dict[str, Any], label: str) -> None:
    """ParamsError unless ``values`` written into ``params_path`` would validate (nothing is written)."""
    import tempfile

    new_text, _ = updated_text(params_path, values, label)
    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / params_path.name
        copy.write_bytes(new_text.encode("utf-8"))
        _validate(copy, values, f"{params_path} with {label}")


def _validate(path: Path, values: dict[str, Any], name: str) -> None:
    try:
        params = load_params(path)
    except ParamsError as exc:
        raise ParamsError(str(exc).replace(str(path), name, 1)) from None
    dumped = params.model_dump(by_alias=True)
    for dotted, value in values.items():
        section, key = dotted.split(".", 1)
        if dumped[section][key] != value:  # the updater's own check: what was written is what is read
            raise ParamsError(f"{name}: '{dotted}' reads back as {dumped[section][key]!r}, expected {value!r}")
