"""One bad image never takes a node down: thin strips get a capped canvas, a large photo is
resized and labelled without whole float copies, and outputs below the cap are unchanged."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import gclip
from gclip import InferenceConfig, Segmenter, inference, parse_text
from gclip.inference import LabelAccumulator, resize_image, resized_size


def test_resized_size_caps_the_long_side_by_hand():
    # mmcv's keep-ratio resize to (2048, 448): scale = min(448 / short, 2048 / long)
    assert resized_size(1, 300, 448, 2048) == (7, 2048)  # 448 / 1 would make it 134400 long
    assert resized_size(1, 1000, 448, 2048) == (2, 2048)
    assert resized_size(300, 1, 448, 2048) == (2048, 7)
    assert resized_size(1, 50_000, 448, 2048) == (1, 2048)  # never below one pixel
    assert resized_size(9000, 9000, None, 2048) == (2048, 2048)  # the cap holds without a scale
    assert resized_size(7, 9, None, 2048) == (7, 9)
    assert resized_size(100, 200, 50, 2048) == (50, 100)  # within the cap: short_side alone
    assert resized_size(1, 1000, 448, None) == (448, 448_000)  # no cap


def test_resized_size_within_the_cap_is_the_uncapped_size():
    for h0, w0, short, cap in itertools.product(
        (1, 2, 3, 17, 300, 1000, 4001), (1, 5, 299, 1024, 9000), (None, 32, 448), (64, 2048)
    ):
        free = resized_size(h0, w0, short)
        capped = resized_size(h0, w0, short, cap)
        assert min(capped) >= 1 and max(capped) <= max(cap, 1)
        if max(free) <= cap:
            assert capped == free
        else:
            assert max(capped) == cap
            assert capped[0] <= free[0] and capped[1] <= free[1]
            if min(capped) > 1:  # the aspect ratio is kept up to rounding of the short side
                assert abs(capped[0] / capped[1] - h0 / w0) <= h0 / w0 / (min(capped) - 0.5)


def test_max_long_side_is_validated():
    assert InferenceConfig().max_long_side == 2048
    assert InferenceConfig(max_long_side=None).max_long_side is None
    with pytest.raises(ValueError, match="max_long_side must be >= 1 or None"):
        InferenceConfig(max_long_side=0)


@pytest.mark.parametrize(
    ("size", "target"),
    [
        ((61, 47), (23, 19)),  # down
        ((13, 11), (40, 33)),  # up
        ((61, 47), (61, 19)),  # columns only
        ((61, 47), (23, 47)),  # rows only
        ((1, 300), (7, 2048)),  # a strip
        ((300, 1), (2048, 7)),
        ((50, 2), (1, 1)),
    ],
)
def test_resize_in_bands_is_one_interpolate_to_the_bit(monkeypatch, size, target):
    """The band path (large images on the CPU) gives the numbers of one F.interpolate call."""
    rng = np.random.default_rng(0)
    uint8 = torch.from_numpy(rng.integers(0, 256, (3, *size), dtype=np.uint8))
    for chw in (uint8, uint8.float() / 255.0):
        unit = chw.float() / 255.0 if chw.dtype == torch.uint8 else chw
        expected = F.interpolate(
            unit[None], size=target, mode="bilinear", align_corners=False, antialias=True
        )[0]
        monkeypatch.setattr(inference, "_RESIZE_BAND_ELEMENTS", 3 * size[1] * 4)  # 4-row bands
        assert torch.equal(resize_image(chw, target), expected)
        monkeypatch.undo()
        assert torch.equal(resize_image(chw, target), expected)
    assert torch.equal(resize_image(uint8, size), uint8.float() / 255.0)  # no resize


def _accumulate(logits, names, chunk):
    classes = torch.arange(logits.shape[0]) // 2
    thresholds = [None] * 5 + [0.7] * 5
    accumulator = LabelAccumulator(
        (57, 83), 3.0, thresholds, 255, torch.uint8, torch.device("cpu"), names=names
    )
    for start in range(0, logits.shape[0], chunk):
        accumulator.update(logits[start : start + chunk], classes[start : start + chunk])
    return accumulator.result()


def test_announcing_the_names_changes_no_bit():
    """Told that one update holds every name, the accumulator keeps no log-sum-exp map: the
    labels and confidence are those of the running maps, to the bit."""
    logits = torch.randn(20, 9, 13, generator=torch.Generator().manual_seed(0)) * 2
    labels, confidence = _accumulate(logits, None, 20)
    for names, chunk in ((20, 20), (20, 7), (None, 7)):
        again = _accumulate(logits, names, chunk)
        assert torch.equal(again[0], labels)
        assert (
            torch.allclose(again[1], confidence, atol=1e-6)
            if chunk < 20
            else torch.equal(again[1], confidence)
        )
    assert labels.dtype == torch.uint8 and 255 in labels.unique()  # the thresholds bite


@pytest.fixture(scope="module")
def segmenter(clip12, tokenizer):
    return Segmenter.from_open_clip(
        clip12, tokenizer, method="gclip", templates=["a photo of a {}."]
    )


@pytest.mark.parametrize("shape", [(1, 300), (1, 1000), (300, 1)])
def test_thin_strips_are_labelled_on_a_capped_canvas(segmenter, shape):
    """Before the cap, a 1 x 1000 strip became a 448 x 448000 canvas (GBs); now 2 x 2048,
    windows narrower than the crop on one side."""
    config = InferenceConfig()  # the library's defaults: short side 448, cap 2048, crop 448
    strip = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resized = segmenter.preprocess(strip, config.short_side, config.max_long_side)
    assert tuple(resized.shape) == (3, *resized_size(*shape, 448, 2048))
    assert max(resized.shape[1:]) == 2048
    [result] = segmenter.segment([strip], parse_text("red\ngreen\nblue"), config)
    assert result.labels_hw.shape == shape and result.confidence_hw.shape == shape
    assert np.isfinite(result.confidence_hw).all() and (result.confidence_hw >= 1 / 3 - 1e-6).all()


def test_strips_beside_ordinary_images_leave_theirs_unchanged(segmenter):
    """The cap touches only images over it: an ordinary image's labels in a batch with
    strips are its labels alone."""
    rng = np.random.default_rng(1)
    ordinary = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
    strips = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((1, 700, 3), (600, 2, 3))]
    vocab = parse_text("a\nb\nc")
    config = InferenceConfig(short_side=32, max_long_side=256, crop=32, stride=16)
    together = segmenter.segment([strips[0], ordinary, strips[1]], vocab, config)
    [alone] = segmenter.segment(
        [ordinary], vocab, InferenceConfig(short_side=32, crop=32, stride=16)
    )
    np.testing.assert_array_equal(together[1].labels_hw, alone.labels_hw)
    np.testing.assert_allclose(together[1].confidence_hw, alone.confidence_hw, atol=1e-5)
    assert [r.labels_hw.shape for r in together] == [(1, 700), (40, 56), (600, 2)]


@pytest.mark.slow
def test_a_9000_by_9000_photo_is_decoded_and_labelled():
    """81 Mpx, under the pixel limit: decoded and labelled at its size by the demo model
    (about 1 GB over the model's own footprint; see the report of the budget work)."""
    from pipeline.formats.images import decode

    ramp = np.linspace(0, 255, 9000).astype(np.uint8)
    photo = np.empty((9000, 9000, 3), np.uint8)
    photo[..., 0] = ramp[:, None]
    photo[..., 1] = ramp[None, :]
    photo[..., 2] = 90
    photo[3000:6000, 3000:6000] = (220, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=85)
    del photo
    image = decode(buffer.getvalue())
    assert image.shape == (9000, 9000, 3)
    segmenter = gclip.load_segmenter("demo")
    vocabulary = parse_text("background\nred square\ngreen circle")
    [result] = segmenter.segment([image], vocabulary)
    assert result.labels_hw.shape == (9000, 9000) and result.labels_hw.dtype == np.uint8
    assert result.confidence_hw.shape == (9000, 9000)
    assert result.labels_hw[4500, 4500] == 1  # the red square's centre
