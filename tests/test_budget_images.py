"""One bad image never takes a node down: the pixel limit is checked from the header, per
call, and large images are converted to RGB without whole intermediate copies."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.formats import images
from pipeline.formats.descriptors import ImageRecord


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_bomb(width: int = 30_000, height: int = 30_000) -> bytes:
    """A valid 1-bit PNG of ``width x height`` black pixels: about 0.1 MB of file that
    Pillow would decode into ``width * height`` bytes, and RGB into three times that."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    row = b"\0" * (1 + -(-width // 8))  # filter byte + packed bits
    packer = zlib.compressobj(9)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grey
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb()


def test_a_png_bomb_is_refused_from_its_header(bomb, monkeypatch):
    def no_pixels(self):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_pixels)
    assert len(bomb) < 1_000_000
    with pytest.raises(images.ImageDecodeError) as err:
        images.decode(bomb)
    assert str(err.value) == (
        "30000x30000 = 900.0 Mpx is over the limit of 89.5 Mpx "
        "(--max-image-pixels; raise it for large photos)"
    )


def test_refusing_a_bomb_allocates_nothing_like_its_pixels(bomb, tmp_path):
    """In a fresh process: the peak resident memory barely moves (its pixels are 900 MB)."""
    (tmp_path / "bomb.png").write_bytes(bomb)
    script = f"""
import resource
from pipeline.formats import images
data = open({str(tmp_path / "bomb.png")!r}, "rb").read()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    images.decode(data)
except images.ImageDecodeError:
    pass
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    grown_mb = int(
        subprocess.run(
            [sys.executable, "-c", script], check=True, capture_output=True, text=True
        ).stdout
    )
    assert grown_mb < 100


def test_the_limit_is_per_call_and_pillow_global_is_off(bomb, monkeypatch):
    assert Image.MAX_IMAGE_PIXELS is None  # Pillow's own check would override the argument
    small = encode(Image.new("RGB", (20, 20)))
    assert images.decode(small, max_pixels=400).shape == (20, 20, 3)  # at the limit: kept
    assert images.decode(small, max_pixels=None).shape == (20, 20, 3)
    with pytest.raises(images.ImageDecodeError, match="20x20 = 400 px is over the limit of 399"):
        images.decode(small, max_pixels=399)

    class Reached(Exception):
        pass

    def reached(self):
        raise Reached

    monkeypatch.setattr(ImageFile.ImageFile, "load", reached)
    with pytest.raises(Reached):  # a raised limit lets the bomb through to its pixels
        images.decode(bomb, max_pixels=10**9)


def test_threads_decode_under_their_own_limits():
    small = encode(Image.new("RGB", (20, 20)))

    def attempt(limit: int) -> bool:
        try:
            images.decode(small, max_pixels=limit)
        except images.ImageDecodeError:
            return False
        return True

    limits = [399, 400] * 50
    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(attempt, limits)) == [limit >= 400 for limit in limits]


def test_load_passes_the_limit_and_refuses_a_bad_setting(tmp_path):
    (tmp_path / "a.png").write_bytes(encode(Image.new("RGB", (30, 20))))
    record = ImageRecord(0, "a", str(tmp_path / "a.png"))
    assert images.load(record, max_pixels=600).shape == (20, 30, 3)
    failure = images.load(record, max_pixels=599)
    assert isinstance(failure, images.ImageFailure) and failure.error == "ImageDecodeError"
    assert "30x20 = 600 px is over the limit of 599 px" in failure.message
    with pytest.raises(ValueError, match="max_pixels must be >= 1 or None"):
        images.load(record, max_pixels=0)


def test_rgb_in_bands_equals_the_whole_conversion(monkeypatch):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (37, 23, 3), np.uint8)
    rgba = np.dstack([rgb, rng.integers(0, 256, (37, 23), np.uint8)])
    palette = Image.fromarray(rgb).convert("P")
    palette.info["transparency"] = 3
    cases = [
        Image.fromarray(rgb),
        Image.fromarray(rgb).convert("L"),
        Image.fromarray(rgb).convert("1"),
        Image.fromarray(rgb).convert("CMYK"),
        Image.fromarray(rgb).convert("YCbCr"),
        Image.fromarray(rgba, mode="RGBA"),
        Image.fromarray(rgba, mode="RGBA").convert("LA"),
        palette,
        Image.fromarray(rng.integers(0, 65535, (37, 23), np.uint16)),
    ]
    whole = [images.to_rgb(image) for image in cases]
    monkeypatch.setattr(images, "_BAND_PIXELS", 23 * 5)  # bands of 5 rows, the last of 2
    for image, expected in zip(cases, whole, strict=True):
        banded = images.to_rgb(image)
        assert banded.flags.writeable and banded.dtype == np.uint8, image.mode
        np.testing.assert_array_equal(banded, expected, err_msg=image.mode)


def test_decode_returns_a_writable_array():
    """Writable, so the segmenter takes it as a tensor without a copy of its own."""
    out = images.decode(encode(Image.new("RGB", (3, 2))))
    assert out.flags.writeable and out.flags.c_contiguous
