"""Decoding images that clients send, safely: the one place an uploaded image becomes pixels.

In order, each refusal a 400 that names the input and the problem:
1. bytes: empty, or more than `max_image_bytes`;
2. format: only Pillow's PNG, JPEG, WebP, GIF (first frame) and BMP decoders are tried (`Image.open(formats=)`),
   so an upload can never reach a rarely used, less hardened decoder;
3. pixels: `Image.open` reads the header only; width x height above `max_pixels` is refused before any pixel
   is decoded (a decompression bomb: a small PNG of a huge blank image). Pillow's own bomb check is set to the
   same limit for the `open` call, under a lock, rather than globally at import;
4. decoding: a truncated or corrupt file is refused (truncated images are never padded);
5. EXIF orientation is applied (a phone photo taken sideways is classified upright), and the image is
   converted to RGB (grey, palette and alpha images included; alpha is dropped).

A request's images together (`decode_images`): every header is read first, and images holding more than
`max_request_pixels` in all are refused before any is decoded (the per-image limit alone let 64 small PNGs of
blank 4000x4000 images decode to 4 GB). Then they are decoded one at a time, each scaled down to `keep_side`
(its shorter side) before the next is decoded. An image more than `max_aspect_ratio` (MAX_ASPECT_RATIO) times
as long as it is wide is refused from its header: a 1x16,000,000 PNG (31 KB) has a shorter side of 1, so no
scaling by the shorter side would ever shrink it, and an image processor resizing its shortest edge to 256 would
make it 256 x 4 billion. So while a request's images decode, it holds one image at full size at most (the one
decoding, within `max_pixels`; in its file's mode and in RGB while converting), and every image decoded before
it at most `keep_side` x `max_aspect_ratio * keep_side` pixels.

Whatever Pillow raises reading a client's bytes (OSError for a JPEG cut short, ValueError for a text or ICC
chunk inflating past Pillow's limit, SyntaxError, struct.error, ...: CORRUPT) is a 400 `invalid_image`; anything
else (MemoryError, a bug here) stays the server's fault, a 500.

Decoding blocks: callers run `decode_images` on the media side's own threads (media/workers.py), never on the
event loop or asyncio's default executor.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmops.errors import InvalidRequest

SAFE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_OPEN_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is module state: one open() sets it at a time
# A request's images together, in pixels, read from their headers. A module constant, not a setting: 64 of the
# 224x224 images the classifiers take are 3.2 M; this allows 64 of 1000x1000, or four at the default per-image
# limit (16 M). Callers raise it to the model's per-image limit where that is higher (api/classifying.py).
MAX_REQUEST_PIXELS = 64_000_000
# An image's longer side over its shorter side, read from its header. A module constant, not a setting: banners
# (728x90) and panoramas (4:1 to 12:1) pass; a classifier centre-crops a square, so a longer image is mostly
# thrown away, and 20:1 bounds what a decoded image kept at `keep_side` holds (and what a processor that resizes
# the shortest edge makes of it) to 20 squares.
MAX_ASPECT_RATIO = 20
# What Pillow raises for bytes it cannot read as an image: the errors its own `Image.open` treats as "not this
# format" (SyntaxError, IndexError, TypeError, struct.error), OSError (a file cut short: "Truncated File Read",
# "image file is truncated"; a decoder refusing its data), ValueError (a zTXt or iCCP chunk inflating past
# MAX_TEXT_CHUNK), EOFError and ArithmeticError (a header's numbers). A client's fault: 400 `invalid_image`.
CORRUPT: tuple[type[BaseException], ...] = (OSError, ValueError, SyntaxError, EOFError, struct.error, LookupError,
                                           TypeError, ArithmeticError)
_DETAIL_CHARS = 200  # of Pillow's message, in the refusal


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int
    max_pixels: int
    formats: tuple[str, ...] = SAFE_FORMATS
    max_request_pixels: int = MAX_REQUEST_PIXELS  # decode_images: all of a request's images together
    keep_side: int | None = None  # decode_images: each image scaled down to this shorter side; None keeps it whole
    max_aspect_ratio: int = MAX_ASPECT_RATIO  # longer side / shorter side, from the header


def _refuse(where: str, message: str, code: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {message}", param=where, code=code)


def _corrupt(where: str, kind: str | None, exc: BaseException) -> InvalidRequest:
    detail = str(exc)[:_DETAIL_CHARS] or type(exc).__name__
    return _refuse(where, f"the {kind or 'image'} file is truncated or corrupt ({detail})", "invalid_image")


def _open(data: bytes, limits: ImageLimits, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limits.max_pixels
        try:
            return Image.open(io.BytesIO(data), formats=list(limits.formats))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise _refuse(where, f"the image has more than {limits.max_pixels} pixels (the limit); it was not "
                          "decoded", "image_too_many_pixels") from None
        except UnidentifiedImageError:
            raise _refuse(where, f"not an image in an accepted format ({', '.join(limits.formats)})",
                          "unsupported_image_format") from None
        except CORRUPT as exc:  # a format's header was recognised, then could not be read
            raise _corrupt(where, None, exc) from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _header(data: bytes, limits: ImageLimits, where: str) -> Any:
    """The image in `data`, opened (its header read, no pixel decoded) within the bytes, format and pixel limits."""
    if not data:
        raise _refuse(where, "the image is empty", "invalid_image")
    if len(data) > limits.max_image_bytes:
        raise _refuse(where, f"the image is {len(data)} bytes; the limit is {limits.max_image_bytes}",
                      "image_too_large")
    image = _open(data, limits, where)
    width, height = image.size
    if width * height > limits.max_pixels:  # Pillow's check covers this; kept so the rule reads here
        raise _refuse(where, f"the image is {width}x{height} pixels; the limit is {limits.max_pixels} pixels",
                      "image_too_many_pixels")
    ratio = limits.max_aspect_ratio
    if max(width, height) > ratio * min(width, height):
        raise _refuse(where, f"the image is {width}x{height} pixels, more than {ratio} times as long as it is wide "
                      f"(the limit is {ratio}:1)", "invalid_image")
    return image


def _decoded(image: Any, where: str) -> Any:
    """The opened `image` decoded, upright, in RGB."""
    from PIL import Image, ImageOps

    failures: tuple[type[BaseException], ...] = (*CORRUPT, Image.DecompressionBombError)
    try:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
        return image.convert("RGB")
    except failures as exc:
        raise _corrupt(where, image.format, exc) from None


def _shrunk(image: Any, keep_side: int | None) -> Any:
    """`image` scaled down (aspect kept) so its shorter side is `keep_side`; as it is when already that small.
    Its longer side is then at most `max_aspect_ratio` times `keep_side` (_header refused longer images)."""
    from PIL import Image

    width, height = image.size
    if keep_side is None or min(width, height) <= keep_side:
        return image
    scale = keep_side / min(width, height)
    size = (max(keep_side, round(width * scale)), max(keep_side, round(height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def decode_image(data: bytes, limits: ImageLimits, where: str) -> Any:
    """The RGB PIL image in `data`, upright, full size, or InvalidRequest (400) naming `where`."""
    return _decoded(_header(data, limits, where), where)


def check_request_pixels(items: Sequence[tuple[bytes, str]], limits: ImageLimits) -> None:
    """400 naming the first image at which the images' pixels, read from their headers, pass
    `limits.max_request_pixels`; each image's own limits are checked on the way. Nothing is decoded."""
    total = 0
    for data, where in items:
        width, height = _header(data, limits, where).size
        total += width * height
        if total > limits.max_request_pixels:
            raise _refuse(where, f"the images up to this one hold {total} pixels; a request's images may hold "
                          f"{limits.max_request_pixels} pixels in all", "request_too_many_pixels")


def decode_images(items: Sequence[tuple[bytes, str]], limits: ImageLimits) -> list[Any]:
    """Decode each (bytes, where) in order, each scaled down to `limits.keep_side` before the next is decoded;
    the first refusal raises, and the request's pixel budget is checked from the headers before any decoding."""
    check_request_pixels(items, limits)
    return [_shrunk(decode_image(data, limits, where), limits.keep_side) for data, where in items]
