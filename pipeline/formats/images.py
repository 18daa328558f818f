"""Image decoding: bytes from any URI to an ``H x W x 3`` uint8 RGB array, or a failure record.

EXIF orientation is applied; every Pillow mode becomes RGB (alpha composited over black,
palette expanded, 16-bit and float grey scaled to 8 bits, CMYK converted); decompression bombs
are refused.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.formats.storage import read_bytes
from pipeline.planning.manifest import ImageRecord

# Pillow's default bomb limit (~89 Mpx); beyond it a file is refused, not decoded.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


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


def decode(data: bytes) -> np.ndarray:
    """Decode image bytes to ``H x W x 3`` uint8 RGB, upright per EXIF."""
    if not data:
        raise ImageDecodeError("the file is empty")
    with pillow_errors():
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_PIXELS:
            raise ImageDecodeError(
                f"{image.width}x{image.height} exceeds the {MAX_PIXELS}-pixel decompression-bomb limit"
            )
        image.load()
    return to_rgb(ImageOps.exif_transpose(image))


@contextmanager
def pillow_errors() -> Iterator[None]:
    """Pillow's refusals of some bytes as :class:`ImageDecodeError`, bomb warnings included."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except UnidentifiedImageError as err:
            # Pillow's message names a BytesIO object's address: not the same in two runs, and
            # failure records must be (a rerun writes the same bytes).
            raise ImageDecodeError(
                "not an image, or a format Pillow cannot read (unknown or corrupt header)"
            ) from err
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise ImageDecodeError(f"refused as a decompression bomb: {err}") from err


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> ``H x W x 3`` uint8."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
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
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


class ChecksumError(ValueError):
    """The file's sha256 differs from the manifest's: it changed since the manifest was made."""


def load(record: ImageRecord) -> np.ndarray | ImageFailure:
    """Read and decode one manifest image; any problem becomes an :class:`ImageFailure`."""
    try:
        data = read_bytes(record.uri)
        if record.sha256 and hashlib.sha256(data).hexdigest() != record.sha256.lower():
            raise ChecksumError(
                f"sha256 of {record.uri} does not match the manifest's {record.sha256}"
            )
        return decode(data)
    except Exception as err:  # per-image boundary: a bad image never kills a shard
        return ImageFailure(record.image_id, record.uri, type(err).__name__, str(err) or repr(err))
