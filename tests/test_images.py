"""Image decoding: every mode to RGB, EXIF orientation, and bad files as failure records."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.formats import images
from pipeline.formats.descriptors import ImageRecord


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def test_modes_become_rgb():
    rgb = np.zeros((4, 6, 3), np.uint8)
    rgb[..., 0] = 200
    cases = {
        "RGB": Image.fromarray(rgb),
        "L": Image.fromarray(rgb).convert("L"),
        "P": Image.fromarray(rgb).convert("P"),
        "RGBA": Image.fromarray(rgb).convert("RGBA"),
        "LA": Image.fromarray(rgb).convert("LA"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
    }
    for mode, image in cases.items():
        fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "LA" else "PNG")
        out = images.decode(encode(image, fmt))
        assert out.shape == (4, 6, 3) and out.dtype == np.uint8, mode
    assert images.decode(encode(cases["RGB"]))[0, 0].tolist() == [200, 0, 0]


def test_alpha_is_composited_over_black():
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 128
    out = images.decode(encode(Image.fromarray(rgba, mode="RGBA")))
    assert out[0, 0].tolist() == [100, 0, 0]


def test_sixteen_bit_grey_is_scaled():
    grey = np.full((3, 3), 65535, np.uint16)
    grey[0, 0] = 0
    out = images.decode(encode(Image.fromarray(grey)))
    assert out[1, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [0, 0, 0]


def test_exif_orientation_is_applied():
    array = np.zeros((2, 4, 3), np.uint8)
    array[0, 0] = 255  # top-left white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    out = images.decode(encode(image, "JPEG", exif=exif, quality=100))
    assert out.shape == (4, 2, 3)
    assert out[0, 1].mean() > 200  # the white corner moved to the top-right


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty"),
        (b"definitely not an image", "not an image, or a format Pillow cannot read"),
    ],
)
def test_bad_bytes(data, match):
    with pytest.raises(images.ImageDecodeError, match=match) as err:
        images.decode(data)
    assert " at 0x" not in str(err.value)  # failure records are the same bytes in every run


def test_truncated_and_bomb():
    data = encode(
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "JPEG"
    )
    with pytest.raises(OSError):
        images.decode(data[: len(data) // 2])
    with pytest.raises(images.ImageDecodeError, match="20x20 = 400 px is over the limit of 100 px"):
        images.decode(encode(Image.new("RGB", (20, 20))), max_pixels=100)


def test_load_turns_errors_into_records(tmp_path):
    (tmp_path / "ok.png").write_bytes(encode(Image.new("RGB", (3, 2))))
    assert images.load(ImageRecord(0, "a", str(tmp_path / "ok.png"))).shape == (2, 3, 3)
    failure = images.load(ImageRecord(1, "b", str(tmp_path / "missing.png")))
    assert isinstance(failure, images.ImageFailure)
    assert failure.image_id == "b" and failure.error == "FileNotFoundError"
    failure = images.load(ImageRecord(2, "c", "nosuchscheme://bucket/x.png"))
    assert isinstance(failure, images.ImageFailure)


def test_sha256_is_checked_when_the_manifest_has_one(tmp_path):
    import hashlib

    data = encode(Image.new("RGB", (3, 2)))
    (tmp_path / "a.png").write_bytes(data)
    good = ImageRecord(0, "a", str(tmp_path / "a.png"), sha256=hashlib.sha256(data).hexdigest())
    assert images.load(good).shape == (2, 3, 3)
    bad = ImageRecord(0, "a", str(tmp_path / "a.png"), sha256="0" * 64)
    failure = images.load(bad)
    assert isinstance(failure, images.ImageFailure) and failure.error == "ChecksumError"
