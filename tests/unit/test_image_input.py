"""Safe decoding of uploaded images: limits, formats, bombs, truncation, EXIF orientation."""

from __future__ import annotations

import struct
import zlib

import pytest
from PIL import Image

from llmops.errors import InvalidRequest
from llmops.media.image_input import SAFE_FORMATS, ImageLimits, decode_image
from tests.helpers import encode_image

LIMITS = ImageLimits(max_image_bytes=200_000, max_pixels=1_000_000)


def refused(data: bytes, limits: ImageLimits = LIMITS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        decode_image(data, limits, "file[0]")
    assert info.value.param == "file[0]"
    assert info.value.message.startswith("file[0]: ")
    return info.value


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with one tiny compressed row: a decompression bomb's shape."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", SAFE_FORMATS)
def test_every_safe_format_decodes_to_rgb(fmt: str) -> None:
    image = Image.new("L", (12, 8), 200)
    decoded = decode_image(encode_image(image, fmt), LIMITS, "x")
    assert decoded.mode == "RGB"
    assert decoded.size == (12, 8)


def test_gif_first_frame_only() -> None:
    frames = [Image.new("P", (8, 8), i) for i in (10, 200)]
    data = encode_image(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(data, LIMITS, "x").size == (8, 8)


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (20, 10), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = decode_image(encode_image(image, "JPEG", exif=exif), LIMITS, "x")
    assert decoded.size == (10, 20)


def test_bomb_refused_from_the_header() -> None:
    data = png_header_only(30_000, 30_000)  # 900 M pixels in about a hundred bytes
    assert len(data) < 200
    err = refused(data)
    assert err.code == "image_too_many_pixels"
    assert "1000000 pixels" in err.message
    assert LIMITS.max_pixels != Image.MAX_IMAGE_PIXELS  # the per-call limit was put back


def test_just_over_the_pixel_limit_refused() -> None:
    err = refused(png_header_only(1001, 1000))
    assert err.code == "image_too_many_pixels"


def test_truncated_file_refused() -> None:
    data = encode_image(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    err = refused(data[: len(data) // 2])
    assert err.code == "invalid_image"
    assert "truncated or corrupt" in err.message


@pytest.mark.parametrize("fmt", ["TIFF", "PPM", "ICO"])
def test_other_formats_refused(fmt: str) -> None:
    err = refused(encode_image(Image.new("RGB", (8, 8)), fmt))
    assert err.code == "unsupported_image_format"
    assert "PNG, JPEG, WEBP, GIF, BMP" in err.message


def test_not_an_image_refused() -> None:
    assert refused(b"%PDF-1.7 not an image").code == "unsupported_image_format"
    assert refused(b"").code == "invalid_image"


def test_oversized_bytes_refused_before_opening() -> None:
    err = refused(b"\x89PNG" + b"\0" * 200_001)
    assert err.code == "image_too_large"
    assert "200005 bytes; the limit is 200000" in err.message


def test_formats_can_be_narrowed() -> None:
    only_png = ImageLimits(200_000, 1_000_000, ("PNG",))
    assert refused(encode_image(Image.new("RGB", (8, 8)), "JPEG"), only_png).code == "unsupported_image_format"
