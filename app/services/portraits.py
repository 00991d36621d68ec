"""Portrait validation: bounded reading, format, pixel count, truncation, normalization."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.errors import ApiError
from app.settings import Settings

# MPO is how Pillow names a multi-picture JPEG, as many phone cameras write them.
ALLOWED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP")
CHUNK = 64 * 1024


@dataclass(frozen=True)
class Portrait:
    """A validated portrait: RGB PNG bytes without metadata, at most `max_stored_portrait_side`
    on a side, and the format and size it was sent in."""

    data: bytes
    format: str
    width: int
    height: int


def read_bounded(stream: BinaryIO, limit: int) -> bytes:
    """Read `stream` in chunks, failing with `portrait_too_large` once it passes `limit` bytes."""
    buffer = bytearray()
    while chunk := stream.read(CHUNK):
        buffer += chunk
        if len(buffer) > limit:
            raise ApiError.of("portrait_too_large", f"the portrait is over {limit} bytes")
    return bytes(buffer)


def _too_many_pixels(limit: int) -> ApiError:
    return ApiError.of("portrait_too_many_pixels", f"the portrait has more than {limit} pixels")


def _open(raw: bytes, max_pixels: int) -> Image.Image:
    """Parse only the header: format and size, nothing decoded yet."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(raw))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error):
        raise ApiError.of("portrait_not_an_image") from None


def validate_portrait(raw: bytes, settings: Settings) -> Portrait:
    """Check a portrait and return it normalized; raise `ApiError` for anything unacceptable."""
    if not raw:
        raise ApiError.of("portrait_missing")
    max_pixels = settings.max_portrait_pixels
    image = _open(raw, max_pixels)
    source_format = image.format or ""
    if source_format not in ALLOWED_FORMATS:
        raise ApiError.of(
            "portrait_unsupported_format",
            f"portraits must be JPEG, PNG or WebP, not {source_format or 'unknown'}",
        )
    width, height = image.size
    # The header's size decides before any pixel is decoded: a bomb never gets allocated.
    if width * height > max_pixels:
        raise _too_many_pixels(max_pixels)
    if width == 0 or height == 0:
        raise ApiError.of("portrait_not_an_image", "the portrait has no pixels")
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay false in the API")
    side = settings.max_stored_portrait_side
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # a JPEG decodes straight at 1/2, 1/4 or 1/8 scale when that still covers `side`
            image.draft("RGB", (side, side))
            image.load()
            normalized = ImageOps.exif_transpose(image).convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_many_pixels(max_pixels) from None
    except Exception:
        # Decoders fail in many ways on damaged data (OSError, ValueError, struct.error, ...);
        # once the header parsed, every one of them means the image data is unusable.
        raise ApiError.of("portrait_truncated") from None
    if max(normalized.size) > side:
        normalized.thumbnail((side, side), Image.Resampling.LANCZOS)  # keeps the aspect ratio
    out = io.BytesIO()
    # Re-encoding drops EXIF/GPS and other metadata; the worker always gets plain RGB PNG.
    normalized.save(out, format="PNG", compress_level=1)
    return Portrait(out.getvalue(), source_format, width, height)
