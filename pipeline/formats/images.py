"""Image decoding: bytes from any URI to an ``H x W x 3`` uint8 RGB array, or a failure record.

EXIF orientation is applied; every Pillow mode becomes RGB (alpha composited over black,
palette expanded, 16-bit and float grey scaled to 8 bits, CMYK converted); an image of more
pixels than a limit is refused from its header, before its pixels are decoded.

Importing this module switches off Pillow's own bomb check (``Image.MAX_IMAGE_PIXELS``, one
value for the whole process): the limit is a per-call argument here, which threads that
decode at once cannot share through a global. Code that opens untrusted images elsewhere
checks their size itself (see :func:`check_pixels`).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.formats.descriptors import ImageRecord
from pipeline.formats.storage import read_bytes

# The default limit, Pillow's own default (~89.5 Mpx); beyond it a file is refused, not decoded.
MAX_PIXELS = 89_478_485
Image.MAX_IMAGE_PIXELS = None  # the limit is checked here, per call (see the docstring)
# Pixels are converted to RGB in bands of rows of about this many pixels, so a large image is
# held once by Pillow and once as the array, not again as whole intermediate copies.
_BAND_PIXELS = 1 << 22
# Modes scaled to 8 bits by their maximum: converted whole, not band by band.
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


class ImageDecodeError(ValueError):
    """The bytes are not a usable image (empty, truncated, unknown format, too large)."""


@dataclass(frozen=True, slots=True)
class ImageFailure:
    """A failed image: it is recorded, and the rest of its shard goes on."""

    image_id: str | int
    uri: str
    error: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "image_id": self.image_id,
            "uri": self.uri,
            "error": self.error,
            "message": self.message,
        }


def decode(data: bytes, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to RGB, upright per EXIF.

    Args:
        data: the file's bytes, in any format Pillow reads.
        max_pixels: refuse an image of more pixels than this, from its header and before its
            pixels are decoded; ``None``: no limit.

    Returns:
        ``H x W x 3`` uint8, writable.

    Raises:
        ImageDecodeError: empty, unreadable, or over ``max_pixels``.
        OSError: truncated or corrupt pixel data (Pillow's own errors).
    """
    if not data:
        raise ImageDecodeError("the file is empty")
    with pillow_errors():
        image = Image.open(io.BytesIO(data))
        check_pixels(image.width, image.height, max_pixels)
        image.load()
    ImageOps.exif_transpose(image, in_place=True)  # a copy only if it must turn the image
    return to_rgb(image)


def check_pixels(width: int, height: int, max_pixels: int | None = MAX_PIXELS) -> None:
    """Refuse a ``width x height`` image of more than ``max_pixels`` pixels (``None``: any)."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageDecodeError(
            f"{width}x{height} = {_pixels(width * height)} is over the limit of "
            f"{_pixels(max_pixels)} (--max-image-pixels; raise it for large photos)"
        )


def _pixels(count: int) -> str:
    return f"{count / 1e6:.1f} Mpx" if count >= 100_000 else f"{count} px"


@contextmanager
def pillow_errors() -> Iterator[None]:
    """Pillow's refusals of some bytes as :class:`ImageDecodeError`."""
    try:
        yield
    except UnidentifiedImageError as err:
        # Pillow's message names a BytesIO object's address: not the same in two runs, and
        # failure records must be (a rerun writes the same bytes).
        raise ImageDecodeError(
            "not an image, or a format Pillow cannot read (unknown or corrupt header)"
        ) from err
    except Image.DecompressionBombError as err:  # if someone set Pillow's global limit again
        raise ImageDecodeError(f"refused as a decompression bomb: {err}") from err


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> ``H x W x 3`` uint8 (writable), converted in bands of rows."""
    if image.mode in _WIDE_GREY:
        return _pixels_to_rgb(image)
    width, height = image.size
    rgb = np.empty((height, width, 3), np.uint8)
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        rgb[top:bottom] = _pixels_to_rgb(image.crop((0, top, width, bottom)))
    return rgb


def _pixels_to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> ``H x W x 3`` uint8, the whole image at once."""
    if image.mode in _WIDE_GREY:
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or grey.max() > 255 else 255.0
        grey8 = np.clip(grey / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2)
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255.0)  # composite over black
        return (rgb + 0.5).astype(np.uint8)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


class ChecksumError(ValueError):
    """The file's sha256 differs from the manifest's: it changed since the manifest was made."""


def load(
    record: ImageRecord,
    max_pixels: int | None = MAX_PIXELS,
    data: bytes | Exception | None = None,
) -> np.ndarray | ImageFailure:
    """Read and decode one manifest image; any problem becomes an :class:`ImageFailure`.

    Args:
        record: the image's manifest row.
        max_pixels: see :func:`decode`.
        data: the image's bytes when already read (a tar member), or the error that stopped
            reading them; ``None``: read from ``record.uri``.

    Returns:
        ``H x W x 3`` uint8 RGB, or the failure.
    """
    if max_pixels is not None and max_pixels < 1:  # a setting's error, not this image's
        raise ValueError(
            f"max_pixels must be >= 1 or None (no limit), got {max_pixels}; see --max-image-pixels."
        )
    if isinstance(data, Exception):  # one error may stand for several members: not raised
        return ImageFailure(record.image_id, record.uri, type(data).__name__, str(data))
    try:
        if data is None:
            data = read_bytes(record.uri)
        if record.sha256 and hashlib.sha256(data).hexdigest() != record.sha256.lower():
            raise ChecksumError(
                f"sha256 of {record.uri} does not match the manifest's {record.sha256}"
            )
        return decode(data, max_pixels)
    except Exception as err:  # per-image boundary: a bad image never kills a shard
        return ImageFailure(record.image_id, record.uri, type(err).__name__, str(err) or repr(err))
