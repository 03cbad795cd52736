import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fake_raw_data import image_bytes
from liftplus.data.images import (
    ImageTooLarge,
    UndecodableImage,
    decode_pixels,
    encode_pixels,
    encode_png,
    error_reason,
    prepare_photo,
    resize_shape,
)


def gradient(width, height) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (height, width, 1)),
                          np.broadcast_to(y, (height, width, 1)),
                          np.full((height, width, 1), 90.0)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_png_of_an_array_is_lossless_and_deterministic():
    array = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert encode_png(array) == encode_png(array.copy())
    assert np.array_equal(np.asarray(opened(encode_png(array))), array)
    gray = array[..., 0]
    assert opened(encode_png(gray)).mode == "L"


def test_small_jpeg_is_copied_byte_for_byte():
    raw = image_bytes(gradient(300, 200), "JPEG", quality=80)
    stored = prepare_photo(raw, max_short_side=256)
    assert stored.ext == "jpg"
    assert stored.data == raw


def test_large_jpeg_is_resized_to_the_short_side_and_stays_jpeg():
    raw = image_bytes(gradient(600, 400), "JPEG", quality=90)
    stored = prepare_photo(raw, max_short_side=256)
    image = opened(stored.data)
    assert stored.ext == "jpg" and image.format == "JPEG"
    assert image.size == (384, 256)
    original = np.asarray(gradient(600, 400).resize((384, 256), Image.Resampling.BICUBIC), float)
    assert np.abs(np.asarray(image, float) - original).mean() < 3


def test_portrait_long_side_as_torchvision_resize():
    assert resize_shape(375, 500, 256) == (256, 341)
    assert resize_shape(500, 375, 256) == (341, 256)
    raw = image_bytes(gradient(375, 500), "PNG")
    stored = prepare_photo(raw, max_short_side=256)
    assert stored.ext == "png" and opened(stored.data).size == (256, 341)


def test_zero_keeps_original_size():
    raw = image_bytes(gradient(600, 400), "JPEG")
    assert prepare_photo(raw, max_short_side=0).data == raw


def test_exif_rotation_is_applied_and_jpeg_re_encoded():
    left_red_right_blue = np.zeros((20, 40, 3), np.uint8)
    left_red_right_blue[:, :20] = (255, 0, 0)
    left_red_right_blue[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # row 0 is the visual right side, column 0 the visual top
    raw = image_bytes(Image.fromarray(left_red_right_blue), "JPEG", quality=95, exif=exif)
    stored = prepare_photo(raw, max_short_side=256)
    assert stored.data != raw and stored.ext == "jpg"
    upright = opened(stored.data)
    assert upright.size == (20, 40)
    assert upright.getexif().get(0x0112, 1) == 1
    top, bottom = np.asarray(upright)[5, 10], np.asarray(upright)[35, 10]
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


def test_cmyk_jpeg_becomes_rgb_jpeg():
    raw = image_bytes(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG")
    stored = prepare_photo(raw, max_short_side=256)
    image = opened(stored.data)
    assert stored.ext == "jpg" and image.mode == "RGB"
    r, g, b = np.asarray(image)[10, 15]
    assert r > 200 and g < 60 and b < 60


def test_palette_rgba_and_la_become_eight_bit_png():
    palette = Image.new("P", (10, 10), 3)
    palette.putpalette([0, 0, 0] * 3 + [10, 200, 30] + [0, 0, 0] * 252)
    rgba = Image.new("RGBA", (10, 10), (10, 20, 30, 0))
    la = Image.new("LA", (10, 10), (77, 128))
    for source, mode, pixel in [(palette, "RGB", (10, 200, 30)), (rgba, "RGB", (10, 20, 30)),
                                (la, "L", 77)]:
        stored = prepare_photo(image_bytes(source, "PNG"), max_short_side=256)
        image = opened(stored.data)
        assert stored.ext == "png" and image.mode == mode
        assert np.array_equal(np.asarray(image)[5, 5], pixel)


def test_sixteen_bit_grayscale_is_scaled_to_eight_bits():
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    raw = image_bytes(Image.fromarray(values), "PNG")
    stored = prepare_photo(raw, max_short_side=256)
    image = opened(stored.data)
    assert image.mode == "L"
    assert np.asarray(image).tolist() == [[0, 100, 255]]


@pytest.mark.parametrize("fmt", ["WEBP", "BMP", "GIF", "TIFF"])
def test_other_formats_become_png(fmt):
    stored = prepare_photo(image_bytes(gradient(40, 30), fmt), max_short_side=256)
    image = opened(stored.data)
    assert stored.ext == "png" and image.format == "PNG"
    assert image.size == (40, 30) and image.mode in ("RGB", "L")


def test_undecodable_and_truncated_bytes_are_reported():
    with pytest.raises(UndecodableImage, match=r"^cannot identify image file$"):  # no "<_io.BytesIO at 0x...>"
        prepare_photo(b"this is not an image", max_short_side=256)
    raw = image_bytes(gradient(200, 200), "JPEG")
    with pytest.raises(UndecodableImage, match="truncated"):
        prepare_photo(raw[: len(raw) // 2], max_short_side=256)


def test_pixels_round_trip_and_refuse_what_is_not_a_uint8_image():
    rgb = np.random.default_rng(0).integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    for array in (rgb, rgb[..., 0]):
        data = encode_pixels(Image.fromarray(array))
        decoded = decode_pixels(data)
        assert decoded.size == (7, 5) and np.array_equal(np.asarray(decoded), array)
    with pytest.raises(ValueError, match="bytes of pixels, expected 105 for 7x5 RGB"):
        decode_pixels(encode_pixels(Image.fromarray(rgb))[:-1])
    floats = io.BytesIO()
    np.save(floats, rgb.astype(np.float32))
    with pytest.raises(ValueError, match="expected a uint8 H x W or H x W x 3 array, got float32"):
        decode_pixels(floats.getvalue())
    with pytest.raises(ValueError, match="not an .npy array"):
        decode_pixels(b"\x89PNG\r\n\x1a\n")


def test_pixel_budget_is_checked_from_the_header_before_decoding():
    raw = image_bytes(Image.new("RGB", (1000, 600), (10, 20, 30)), "PNG")
    header_only = raw[:64]  # the size is known, not one pixel is
    with pytest.raises(ImageTooLarge, match=r"^too large: 1000x600 is 0\.6 MP, over the 0\.5 MP budget$"):
        prepare_photo(header_only, max_short_side=256, max_pixels=500_000)
    assert prepare_photo(raw, max_short_side=0, max_pixels=600_000).ext == "png"
    with pytest.raises(UndecodableImage, match="truncated|broken|image file"):
        prepare_photo(header_only, max_short_side=256, max_pixels=600_000)


def test_pils_own_bomb_limit_is_reported_as_too_large(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses over twice this
    raw = image_bytes(gradient(50, 50), "PNG")
    with pytest.raises(ImageTooLarge, match=r"^too large: Image size \(2500 pixels\) exceeds limit of 2000 pixels"):
        prepare_photo(raw, max_short_side=256)


def test_pils_bomb_warning_never_reaches_stderr():
    """Even where every warning is an error, an image over PIL's soft limit but within the budget is stored."""
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "import io; from PIL import Image\n"
        "from liftplus.data.images import prepare_photo\n"
        "Image.MAX_IMAGE_PIXELS = 1000\n"
        "buffer = io.BytesIO(); Image.new('RGB', (40, 40)).save(buffer, format='PNG')\n"
        "print(prepare_photo(buffer.getvalue(), 256).ext)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (0, "png\n", "")


def test_error_reason_is_one_line_without_object_addresses():
    exc = OSError("cannot identify image file <_io.BytesIO object at 0x7f3a2c1d9e40>\nmore detail")
    assert error_reason(exc) == "cannot identify image file"
    assert error_reason(ValueError()) == "ValueError"
    assert error_reason(OSError("<PIL.PngImagePlugin.PngImageFile image mode=RGB size=3x3 at 0x10>")) == "OSError"
