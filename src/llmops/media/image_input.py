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

Decoding blocks: callers run `decode_images` off the event loop (`await asyncio.to_thread(...)`).
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llmops.errors import InvalidRequest

SAFE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
_OPEN_LOCK = threading.Lock()  # Image.MAX_IMAGE_PIXELS is module state: one open() sets it at a time


@dataclass(frozen=True)
class ImageLimits:
    max_image_bytes: int
    max_pixels: int
    formats: tuple[str, ...] = SAFE_FORMATS


def _refuse(where: str, message: str, code: str) -> InvalidRequest:
    return InvalidRequest(f"{where}: {message}", param=where, code=code)


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
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def decode_image(data: bytes, limits: ImageLimits, where: str) -> Any:
    """The RGB PIL image in `data`, upright, or InvalidRequest (400) naming `where`."""
    from PIL import Image, ImageOps

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
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        return upright.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
        raise _refuse(where, f"the {image.format} file is truncated or corrupt ({exc})", "invalid_image") from None


def decode_images(items: Sequence[tuple[bytes, str]], limits: ImageLimits) -> list[Any]:
    """Decode each (bytes, where) in order; the first refusal raises."""
    return [decode_image(data, limits, where) for data, where in items]
