"""Decoding and validating uploaded image bytes; thumbnails."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone

from PIL import Image, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP"}


class ImageRejected(ValueError):
    """The bytes are not an image this service accepts; the message says why."""


@dataclass
class DecodedImage:
    image: Image.Image  # fully loaded, RGB
    sha256: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    captured_at: datetime | None = None


EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
DATE_TIME = 0x0132


def capture_time(image: Image.Image) -> datetime | None:
    """EXIF DateTimeOriginal (else DateTime), taken as UTC; None when absent or unreadable."""
    try:
        exif = image.getexif()
        raw = exif.get_ifd(EXIF_IFD).get(DATE_TIME_ORIGINAL) or exif.get(DATE_TIME)
        if not isinstance(raw, str):
            return None
        return datetime.strptime(raw.strip("\x00 "), "%Y:%m:%d %H:%M:%S").replace(tzinfo=timezone.utc)
    except Exception:  # a broken EXIF block never rejects the image itself
        return None


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    if not data:
        raise ImageRejected("empty file")
    if len(data) > max_bytes:
        raise ImageRejected(f"file is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            probe = Image.open(io.BytesIO(data))
            # The header gives the size before any pixel is decoded: refuse bombs here.
            width, height = probe.size
            if width * height > max_pixels:
                raise ImageRejected(f"image is {width}x{height} pixels, over the limit of {max_pixels}")
            fmt = probe.format
            if fmt not in ALLOWED_FORMATS:
                raise ImageRejected(f"unsupported image format {fmt}")
            probe.load()  # raises on truncated or corrupt data
            captured_at = capture_time(probe)
            rgb = probe.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("image is over the limit of pixels that can be decoded safely (decompression bomb)") from exc
    except UnidentifiedImageError as exc:
        raise ImageRejected("not a decodable image (unknown or unsupported format)") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # the library's text would only repeat its internals
        raise ImageRejected("corrupt or truncated image") from exc
    return DecodedImage(
        image=rgb,
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=Image.MIME.get(fmt, "application/octet-stream"),
        width=width,
        height=height,
        size_bytes=len(data),
        captured_at=captured_at,
    )


def thumbnail_jpeg(data: bytes, size: int) -> bytes:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        img.thumbnail((size, size))
        out = io.BytesIO()
        img.save(out, format="JPEG", quality=85)
        return out.getvalue()
