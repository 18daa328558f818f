"""A large image's label maps in bands: the bits of the code before, with a band's memory.

The reference is the label accumulation as it was before the bands were thinned: each band of
rows upsampled whole, its maximum and ``torch.logsumexp`` over the names taken on the whole
band, the thresholds applied in bands of 4 Mpx. Kept here step for step, it is what the new
path must equal to the bit, for any split of the rows into bands and blocks.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gclip import InferenceConfig, Segmenter, inference, parse_text
from gclip.inference import (
    LabelAccumulator,
    label_dtype,
    refine,
    stitch,
    window_features,
)
from gclip.segmenter import to_chw


def _previous_upsample_rows(x, size_hw, top, bottom):
    _, h, _ = x.shape
    out_h, out_w = size_hw
    ys = torch.arange(top, bottom, dtype=torch.float64)
    src = ((ys + 0.5) * (h / out_h) - 0.5).clamp(min=0)
    y_lo = src.floor().long().clamp(max=h - 1)
    y_hi = (y_lo + 1).clamp(max=h - 1)
    weight = (src - y_lo).to(x.dtype)[None, :, None]
    rows = x[:, y_lo] * (1 - weight) + x[:, y_hi] * weight
    return F.interpolate(rows, size=out_w, mode="linear", align_corners=False)


def _previous_labels(
    chunks: Sequence[tuple[torch.Tensor, torch.Tensor]],
    size_hw: tuple[int, int],
    scale: float,
    thresholds: Sequence[float | None],
    unlabelled: int,
    dtype: torch.dtype,
    announced: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The previous ``LabelAccumulator``: ``chunks`` of (``N x h x w`` logits, classes)."""
    h0, w0 = size_hw
    best = torch.full(size_hw, -torch.inf)
    label = torch.zeros(size_hw, dtype=dtype)
    lse_all = None
    whole = announced and len(chunks) == 1
    for logits, classes in chunks:
        classes = classes.to(dtype)
        if not whole and lse_all is None:
            lse_all = torch.full(size_hw, -torch.inf)
        band = max(1, inference._BAND_ELEMENTS // max(1, logits.shape[0] * w0))
        for top in range(0, h0, band):
            rows = slice(top, min(top + band, h0))
            scaled = _previous_upsample_rows(logits, size_hw, top, rows.stop).mul_(scale)
            values, name = scaled.max(dim=0)
            better = values > best[rows]
            label[rows] = torch.where(better, classes[name], label[rows])
            best[rows] = torch.maximum(values, best[rows])
            lse = torch.logsumexp(scaled, dim=0)
            if whole:
                best[rows].sub_(lse).exp_()
            else:
                lse_all[rows] = torch.logaddexp(lse_all[rows], lse)
    if not whole:
        best.sub_(lse_all).exp_()
    min_prob = torch.tensor([-1.0 if t is None else t for t in thresholds])
    band = max(1, ((1 << 25) >> 3) // w0)
    for top in range(0, h0, band):
        part = label[top : top + band]
        part.masked_fill_(~(best[top : top + band] >= min_prob[part.long()]), unlabelled)
    return label, best


def _new_labels(chunks, size_hw, scale, thresholds, unlabelled, dtype, announced):
    names = sum(logits.shape[0] for logits, _ in chunks) if announced else None
    accumulator = LabelAccumulator(
        size_hw, scale, thresholds, unlabelled, dtype, torch.device("cpu"), names=names
    )
    for logits, classes in chunks:
        accumulator.update(logits, classes)
    return accumulator.result()


def _assert_same_bits(new, previous):
    assert new[0].dtype == previous[0].dtype and torch.equal(new[0], previous[0])
    assert new[1].dtype == torch.float32
    assert torch.equal(new[1].view(torch.int32), previous[1].view(torch.int32))


def _thin_bands(monkeypatch, band_elements, block_pixels):
    monkeypatch.setattr(inference, "_BAND_ELEMENTS", band_elements)
    monkeypatch.setattr(inference, "_BLOCK_PIXELS", block_pixels)


@pytest.mark.parametrize(
    ("logits_hw", "size_hw", "bands"),
    [
        ((9, 13), (57, 83), None),  # one band, one block
        ((1, 40), (1, 300), None),  # a strip
        ((40, 1), (300, 1), (300 * 7, 40)),  # one pixel wide: 40-row blocks, 52-row bands at N=40
        ((33, 21), (203, 517), (517 * 35, 517 * 3)),  # bands of max(1, 35 // N) rows, 3-row blocks
        ((16, 16), (96, 128), (128 * 24 * 40, 128 * 5)),  # 24-row bands at N=40, 5-row blocks
    ],
)
@pytest.mark.parametrize("names", [1, 3, 40])
def test_label_maps_are_the_previous_ones_to_the_bit(monkeypatch, logits_hw, size_hw, bands, names):
    """Names whole, in chunks, or unannounced; thresholds (they bite at 40 names); exact ties
    between names."""
    if bands is not None:
        _thin_bands(monkeypatch, *bands)
    generator = torch.Generator().manual_seed(names)
    logits = torch.rand(names, *logits_hw, generator=generator) * 0.3
    if names > 2:
        logits[2] = logits[1]  # exact ties: the earlier name wins
    classes = torch.arange(names) // 2
    thresholds = [0.2 if c % 2 else None for c in range(int(classes[-1]) + 1)]
    for chunk, announced in ((names, True), (max(1, names // 3), True), (names, False)):
        chunks = [(logits[a : a + chunk], classes[a : a + chunk]) for a in range(0, names, chunk)]
        args = (chunks, size_hw, 40.0, thresholds, 255, torch.uint8, announced)
        _assert_same_bits(_new_labels(*args), _previous_labels(*args))


def test_more_than_255_classes_are_the_previous_ones_to_the_bit(monkeypatch):
    _thin_bands(monkeypatch, 97 * 4 * 300, 97 * 3)
    logits = torch.randn(600, 7, 9, generator=torch.Generator().manual_seed(0))
    classes = torch.arange(600) // 2
    thresholds = [None] * 299 + [0.01]
    chunks = [(logits[a : a + 256], classes[a : a + 256]) for a in range(0, 600, 256)]
    args = (chunks, (41, 97), 3.0, thresholds, 65535, label_dtype(300), True)
    new = _new_labels(*args)
    assert new[0].dtype == torch.int32
    _assert_same_bits(new, _previous_labels(*args))


@pytest.fixture(scope="module")
def segmenter(clip12, tokenizer):
    return Segmenter.from_open_clip(
        clip12, tokenizer, method="gclip", templates=["a photo of a {}."]
    )


def _previous_segment(segmenter, images, vocabulary, config):
    """The previous ``Segmenter.segment``: a float copy of the whole image resized at once,
    then :func:`_previous_labels` on every name chunk's refined logits."""
    resized = []
    for image in images:
        chw = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
        size_hw = inference.resized_size(*image.shape[:2], config.short_side, config.max_long_side)
        if tuple(size_hw) != tuple(image.shape[:2]):
            chw = F.interpolate(
                chw[None], size=size_hw, mode="bilinear", align_corners=False, antialias=True
            )[0]
        resized.append((chw - segmenter._mean) / segmenter._std)
    text = segmenter.text.embed(vocabulary)
    name_to_class = torch.tensor(vocabulary.name_to_class)
    windowed = window_features(resized, segmenter.dense_features, segmenter.patch_size, config)
    chunks: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in images]
    for start in range(0, text.shape[0], config.name_chunk):
        names = slice(start, start + config.name_chunk)
        for i, canvas in enumerate(stitch(windowed, text[names])):
            chunks[i].append((refine(canvas, resized[i], config), name_to_class[names]))
    dtype = label_dtype(len(vocabulary.classes))
    return [
        _previous_labels(
            per_image,
            image.shape[:2],
            config.logit_scale,
            vocabulary.thresholds,
            vocabulary.below_threshold_label,
            dtype,
            True,
        )
        for per_image, image in zip(chunks, images, strict=True)
    ]


@pytest.mark.parametrize("pamr", [False, True])
@pytest.mark.parametrize("name_chunk", [256, 2])
def test_segment_is_the_previous_segment_to_the_bit(monkeypatch, segmenter, pamr, name_chunk):
    """A read-only photo resized in bands of rows, labelled in bands of 6 rows and blocks of
    2, beside a writable image and a strip: the labels and confidence of the code before."""
    _thin_bands(monkeypatch, 157 * 6 * 5, 157 * 2)
    monkeypatch.setattr(inference, "_RESIZE_BAND_ELEMENTS", 3 * 157 * 16)
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (211, 157, 3), dtype=np.uint8)
    photo.flags.writeable = False  # as an image from Ray's object store arrives
    images = [photo, rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)]
    images.append(rng.integers(0, 256, (1, 300, 3), dtype=np.uint8))
    vocabulary = parse_text("red, crimson\ngreen\nblue\nsky", threshold=0.83)
    config = InferenceConfig(
        short_side=32,
        max_long_side=96,
        crop=32,
        stride=16,
        pamr=pamr,
        pamr_dilations=(1, 2),
        name_chunk=name_chunk,
    )
    results = segmenter.segment(images, vocabulary, config)
    previous = _previous_segment(segmenter, images, vocabulary, config)
    for result, (labels, confidence) in zip(results, previous, strict=True):
        assert result.labels_hw.dtype == np.uint8
        np.testing.assert_array_equal(result.labels_hw, labels.numpy())
        assert result.confidence_hw.dtype == np.float32
        np.testing.assert_array_equal(
            result.confidence_hw.view(np.int32), confidence.numpy().view(np.int32)
        )
    assert any((r.labels_hw == 255).any() for r in results)  # the threshold bites


def test_a_read_only_image_is_shared_not_copied_and_labelled_alike(segmenter):
    image = np.random.default_rng(3).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    frozen = image.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's warning on read-only memory is not shown
        chw = to_chw(frozen)
    assert chw.data_ptr() == frozen.ctypes.data and chw.shape == (3, 30, 41)
    vocabulary = parse_text("a\nb\nc")
    config = InferenceConfig(short_side=32, crop=32, stride=16)
    [shared] = segmenter.segment([frozen], vocabulary, config)
    [copied] = segmenter.segment([image], vocabulary, config)
    np.testing.assert_array_equal(shared.labels_hw, copied.labels_hw)
    np.testing.assert_array_equal(shared.confidence_hw, copied.confidence_hw)
    np.testing.assert_array_equal(frozen, image)  # untouched


_PEAK = """
import numpy as np
import gclip

def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024

segmenter = gclip.load_segmenter("demo")
vocabulary = gclip.parse_text("background\\nred circle\\nblue square")
segmenter.segment([np.zeros((64, 64, 3), np.uint8)], vocabulary)
photo = np.full(({side}, {side}, 3), (90, 140, 200), np.uint8)
photo[::7, ::5] = 17
photo.flags.writeable = False
before = status("VmRSS")
try:
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM from here
except OSError:
    pass  # the model's own peak is lower than the one measured
[result] = segmenter.segment([photo], vocabulary)
print(status("VmHWM") - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_labelling_a_large_photo_costs_its_results_and_a_band():
    """36 Mpx on the demo model: the results (5 B a pixel, 172 MiB) and one band of the
    scaled logits with two maps of its pixels (~250 MiB), no copy of the read-only input.
    Before: ~620 MiB over the results (band temporaries, and a copy of the input)."""
    side = 6000
    code = _PEAK.format(side=side)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    cost_mib = float(done.stdout.strip().splitlines()[-1])
    results_mib = side * side * 5 / 2**20
    assert cost_mib < results_mib + 350, f"{cost_mib:.0f} MiB over {results_mib:.0f} of results"


def test_the_previous_reference_is_what_it_was():
    """Guard for the reference itself: the accumulator's contract (max over synonyms, softmax
    over all names) on a case small enough to check by hand."""
    logits = torch.tensor([[[0.0, 0.5]], [[1.0, 0.0]], [[0.0, 0.4]]])  # N=3 x 1 x 2
    classes = torch.tensor([0, 1, 1])
    labels, confidence = _previous_labels(
        [(logits, classes)], (1, 2), 1.0, [None, None], 255, torch.uint8, True
    )
    assert labels.tolist() == [[1, 0]]
    p0, p1 = torch.softmax(logits[:, 0, 0], 0), torch.softmax(logits[:, 0, 1], 0)
    torch.testing.assert_close(confidence[0], torch.stack([p0[1], p1[0]]))
