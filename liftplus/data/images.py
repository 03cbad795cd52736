"""Image bytes for the shards: lossless PNG for decoded arrays, photos kept or resized.

A photo is stored as it came whenever it can be: a JPEG that needs no resize
and no EXIF rotation is copied byte for byte. Anything else is decoded once,
turned upright, converted to 8-bit RGB or L, shrunk so its short side is
``max_short_side`` if it is larger, and re-encoded (JPEG stays JPEG at
quality 95; every other format becomes PNG).

With ``data.store: pixels`` every image is instead stored decoded, as the
uint8 ``.npy`` array of its pixels (H x W x 3, or H x W for grayscale): no
decode when training, for ``H * W * channels + 128`` bytes an image (a
256 x 341 RGB photo: 262 KB against about 25 KB as JPEG).
"""

from __future__ import annotations

import io
import os
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".gif", ".tif", ".tiff", ".webp")
"""File name endings read as images (case-insensitive), by every source and by ``predict``."""
DEFAULT_MAX_PIXELS = 50_000_000
"""A pixel budget sized for photos (a 50 MP camera); ``data.max_pixels`` and ``predict --max-pixels``."""
JPEG_QUALITY = 95
PIXELS_EXT = "npy"
EXIF_ORIENTATION = 0x0112
_EIGHT_BIT_MODES = ("RGB", "L")
_OBJECT_REPR = re.compile(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>")
"""`` <_io.BytesIO object at 0x7f...>`` in PIL's messages: a different address every run."""

# The pixel budget (``data.max_pixels``) is checked before decoding: PIL's softer warning adds nothing
# but a stray stderr line; its hard DecompressionBombError is reported as "too large".
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class UndecodableImage(ValueError):
    """The bytes are not an image PIL can fully decode."""


class ImageTooLarge(UndecodableImage):
    """The image has more pixels than the budget allows; refused before its pixels are decoded."""


@dataclass(frozen=True)
class EncodedImage:
    data: bytes
    ext: str


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def pixel_budget_exceeded(size: tuple[int, int], max_pixels: int) -> str | None:
    """Why an image of ``size`` (width, height) is refused, or None; checked before any pixel is decoded."""
    width, height = size
    if width * height <= max_pixels:
        return None
    return f"{width}x{height} is {width * height / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP budget"


def encode_png(array: np.ndarray) -> bytes:
    """Lossless, deterministic PNG of a uint8 HxW (grayscale) or HxWx3 (RGB) array."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def resize_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after torchvision's ``Resize(short_side)``: short side scaled to ``short_side``,
    long side truncated. The one rule for the shard stage's stored size and the transforms' resize."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def to_eight_bit(image: Image.Image) -> Image.Image:
    """RGB or L with 8 bits per channel; alpha is dropped as ``convert('RGB')`` does."""
    if image.mode in _EIGHT_BIT_MODES:
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    return image.convert("RGB")


def encode_pixels(image: Image.Image) -> bytes:
    """The ``.npy`` bytes of an 8-bit RGB or L image's pixels (no pickle, C order)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(np.asarray(to_eight_bit(image))), allow_pickle=False)
    return buffer.getvalue()


_NPY_PREAMBLE = 10
"""Magic string, version and header length of a version 1.0 ``.npy`` file."""
_pixel_layouts: dict[bytes, tuple[str, tuple[int, int], int]] = {}


def _pixel_layout(data: bytes) -> tuple[str, tuple[int, int], int]:
    """(PIL mode, (width, height), offset of the pixels) from an ``.npy`` header, parsed once per shape."""
    header_end = _NPY_PREAMBLE + int.from_bytes(data[8:10], "little")
    key = bytes(data[:header_end])
    layout = _pixel_layouts.get(key)
    if layout is None:
        stream = io.BytesIO(key)
        if np.lib.format.read_magic(stream) != (1, 0):
            raise ValueError("not a version 1.0 .npy array")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        if dtype != np.uint8 or fortran or not (len(shape) == 2 or (len(shape) == 3 and shape[2] == 3)):
            raise ValueError(f"expected a uint8 H x W or H x W x 3 array, got {dtype} {shape}")
        layout = ("L" if len(shape) == 2 else "RGB", (shape[1], shape[0]), header_end)
        _pixel_layouts[key] = layout
    return layout


def decode_pixels(data: bytes) -> Image.Image:
    """The image stored by :func:`encode_pixels`; ValueError if it is not such an array."""
    if len(data) < _NPY_PREAMBLE or data[:6] != b"\x93NUMPY":
        raise ValueError("not an .npy array")
    mode, size, offset = _pixel_layout(data)
    expected = size[0] * size[1] * len(mode)
    if len(data) - offset != expected:
        raise ValueError(f"{len(data) - offset} bytes of pixels, expected {expected} for {size[0]}x{size[1]} {mode}")
    return Image.frombuffer(mode, size, memoryview(data)[offset:], "raw", mode, 0, 1)


def open_image(data: bytes, ext: str) -> Image.Image:
    """A shard member's image, fully decoded (``npy`` pixels or an encoded PNG/JPEG)."""
    if ext == PIXELS_EXT:
        return decode_pixels(data)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def as_pixels(data: bytes, ext: str) -> bytes:
    """Stored image bytes re-stored as pixels (decoded once, here, instead of every epoch)."""
    return encode_pixels(open_image(data, ext))


def error_reason(exc: BaseException) -> str:
    """An exception as one stable line: its first line, without object reprs (``<... at 0x...>``).

    Skipped images are listed in the manifest with this reason, so the same
    data must give the same bytes on every run.
    """
    first_line = str(exc).splitlines()[0].strip() if str(exc).strip() else ""
    return _OBJECT_REPR.sub("", first_line) or type(exc).__name__


def open_decoded(source: bytes | str | os.PathLike, max_pixels: int) -> Image.Image:
    """The fully decoded image of a file's bytes or of a file; its size is checked against ``max_pixels``
    from the header, before any pixel is decoded (a small file can hold a decompression bomb).

    Raise ImageTooLarge over the budget or PIL's own hard limit, UndecodableImage if PIL cannot
    decode it (both with a one-line reason). Used by the sources and by ``predict``.
    """
    try:
        with warnings.catch_warnings():  # PIL's softer DecompressionBombWarning: the budget below decides
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:  # over PIL's own hard limit (2 x MAX_IMAGE_PIXELS)
        raise ImageTooLarge(f"too large: {error_reason(exc)}") from None
    except Exception as exc:  # PIL raises many types for bad bytes
        raise UndecodableImage(error_reason(exc)) from None
    try:
        too_large = pixel_budget_exceeded(image.size, max_pixels)
        if too_large:
            raise ImageTooLarge(f"too large: {too_large}")
        image.load()
    except UndecodableImage:
        image.close()
        raise
    except Exception as exc:
        image.close()
        raise UndecodableImage(error_reason(exc)) from None
    return image


def prepare_photo(raw: bytes, max_short_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> EncodedImage:
    """Bytes to store for a photo file's content.

    Raise ImageTooLarge if it has more than ``max_pixels`` pixels, UndecodableImage
    if it does not decode.
    """
    image = open_decoded(raw, max_pixels)
    source_format = image.format
    orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    too_large = max_short_side > 0 and min(image.size) > max_short_side
    if (
        source_format == "JPEG"
        and not too_large
        and orientation == 1
        and image.mode in _EIGHT_BIT_MODES
    ):
        return EncodedImage(raw, "jpg")

    image = ImageOps.exif_transpose(image)
    image = to_eight_bit(image)
    if too_large:
        height, width = resize_shape(image.height, image.width, max_short_side)
        size = (width, height)
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    if source_format == "JPEG":
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
        return EncodedImage(buffer.getvalue(), "jpg")
    image.save(buffer, format="PNG")
    return EncodedImage(buffer.getvalue(), "png")
