"""The idx format of (Fashion-)MNIST, gzip-compressed or plain, read with strict checks."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from liftplus.errors import DataError

_UBYTE = 0x08


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array stored in ``path``; DataError naming the file if it is not whole."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                content = f.read()
        else:
            content = path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: not a readable idx file ({_reason(exc)})") from None
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(
            f"{path}: truncated idx file ({len(content)} bytes, header needs {header_size})"
        )
    zero, dtype_code, dims = content[0:2], content[2], content[3]
    if zero != b"\x00\x00" or dtype_code != _UBYTE or dims != ndim:
        raise DataError(
            f"{path}: not an idx{ndim}-ubyte file (magic {content[:4].hex()}, "
            f"expected 0000080{ndim})"
        )
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64))
    found = len(content) - header_size
    if found != expected:
        problem = "truncated" if found < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {problem}: shape {shape} needs {expected} data bytes, found {found}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "compressed stream ends early: truncated"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
