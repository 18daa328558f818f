"""Sliding windows, stitching, probabilities, PAMR and batch equivalence."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gclip import InferenceConfig, Segmenter, parse_json, parse_text
from gclip.inference import (
    Window,
    _overlap,
    _steps,
    batch_windows,
    labels_from_logits,
    plan_windows,
    resized_size,
    stitch,
    stitch_logits,
    upsample_rows,
    window_features,
    window_starts,
)
from gclip.pamr import pamr


def test_window_starts_by_hand():
    assert window_starts(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]
    assert window_starts(11, 4, 3) == [(0, 4), (3, 4), (6, 4), (7, 4)]  # last shifted inside
    assert window_starts(4, 4, 2) == [(0, 4)]
    assert window_starts(3, 8, 4) == [(0, 3)]  # smaller than one crop


def test_every_pixel_covered():
    for length in range(1, 60):
        covered = np.zeros(length, int)
        for start, size in window_starts(length, 16, 5):
            covered[start : start + size] += 1
            assert start >= 0 and start + size <= length
        assert covered.min() >= 1


def test_resized_size():
    assert resized_size(100, 200, 50) == (50, 100)
    assert resized_size(3, 5, 448) == (448, 747)
    assert resized_size(7, 9, None) == (7, 9)


def test_batches_mix_images_and_group_sizes():
    windows = plan_windows([(16, 24), (16, 16), (5, 16)], crop=16, stride=8)
    batches = batch_windows(windows, patch=8, batch_size=3)
    flat = [w for b in batches for w in b]
    assert len(flat) == len(windows) and set(flat) == set(windows)
    for batch in batches:
        assert len(batch) <= 3
        assert len({(-(-w.h // 8), -(-w.w // 8)) for w in batch}) == 1
    assert any(
        len({w.image for w in b}) > 1 for b in batches
    )  # windows of several images share a forward


def test_stitching_exact_by_hand():
    """Image 8 x 24, crop 8, stride 8 -> windows at x0 = 0, 8, 16; crop 16 stride 8 -> 0, 8.

    The fake backbone gives each window one feature, a mix of two text directions set by the
    window's mean pixel value; the canvas is then the average of the covering windows' logits.
    """
    text = torch.eye(2)  # N=2 names, E=2
    image = torch.zeros(3, 8, 24)
    image[:, :, 8:16] = 1.0
    image[:, :, 16:] = 2.0

    def features_fn(crops):  # B x 3 x h x w -> B x h/8 x w/8 x 2
        m = crops.mean(dim=(1, 2, 3))  # B
        f = torch.stack([torch.cos(m), torch.sin(m)], dim=-1)  # unit vectors
        return f[:, None, None, :].expand(-1, crops.shape[2] // 8, crops.shape[3] // 8, -1)

    config = InferenceConfig(short_side=None, crop=16, stride=8, batch_size=2)
    [logits] = stitch_logits([image], text, features_fn, patch=8, config=config)
    m_a, m_b = 0.5, 1.5  # means of windows x0=0 (cols 0-15) and x0=8 (cols 8-23)
    row = torch.tensor(
        [np.cos(m_a)] * 8 + [(np.cos(m_a) + np.cos(m_b)) / 2] * 8 + [np.cos(m_b)] * 8
    )
    torch.testing.assert_close(logits[0], row.float().expand(8, -1))


def test_upsample_rows_matches_interpolate():
    x = torch.randn(5, 7, 11)
    full = F.interpolate(x[None], size=(23, 30), mode="bilinear", align_corners=False)[0]
    bands = torch.cat(
        [upsample_rows(x, (23, 30), t, min(t + 4, 23)) for t in range(0, 23, 4)], dim=1
    )
    torch.testing.assert_close(bands, full, atol=1e-5, rtol=1e-5)


def test_labels_synonym_max_and_threshold_by_hand():
    # names 0 -> class 0; names 1, 2 -> class 1 (synonyms). Column 0: name 1 wins outright.
    # Column 1: name 0 has the single highest probability, but class 1's two synonyms together
    # hold more mass: the rule is max over synonyms, not sum, so class 0 wins.
    logits = torch.tensor([[[0.0, 0.5]], [[1.0, 0.0]], [[0.0, 0.4]]])  # N=3 x 1 x 2
    index = torch.tensor([0, 1, 1])
    labels, conf = labels_from_logits(logits, index, 2, 1.0, [None, None], (1, 2), 255)
    p0 = torch.softmax(logits[:, 0, 0], 0)
    p1 = torch.softmax(logits[:, 0, 1], 0)
    assert p1[1] + p1[2] > p1[0]
    assert labels.tolist() == [[1, 0]]
    torch.testing.assert_close(conf[0], torch.stack([p0[1], p1[0]]))
    labels, _ = labels_from_logits(logits, index, 2, 1.0, [0.5, None], (1, 2), 255)
    assert labels.tolist() == [[1, 255]]  # class 0 at 0.398 < its threshold 0.5 -> unlabelled
    labels, _ = labels_from_logits(logits, index, 2, 2.0, [None, None], (1, 2), 255)
    assert labels.tolist() == [[1, 0]]  # the scale sharpens but keeps the order


def test_pamr_keeps_constants_and_respects_edges():
    image = torch.zeros(3, 32, 32)
    image[:, :, 16:] = 1.0
    const = torch.full((2, 32, 32), 0.3)
    torch.testing.assert_close(pamr(image, const, 5, (1, 2)), const)
    torch.manual_seed(0)
    scores = torch.randn(1, 32, 32)
    scores[:, :, 16:] += 5.0
    out = pamr(image, scores, 10, (1, 2))
    assert out[:, :, :14].std() < 0.5 * scores[:, :, :14].std()  # smoothed inside a region
    assert out[:, :, 18:].mean() - out[:, :, :14].mean() > 4.5  # but not across the edge


@pytest.fixture(scope="module")
def segmenter(clip12, tokenizer):
    return Segmenter.from_open_clip(
        clip12, tokenizer, method="gclip", templates=["a photo of a {}."]
    )


def _images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, size=s, dtype=np.uint8)
        for s in [(40, 64, 3), (48, 48, 3), (21, 70, 3)]
    ]


def test_batched_equals_one_by_one(segmenter):
    vocab = parse_text("red, crimson\ngreen\nblue")
    config = InferenceConfig(
        short_side=32, crop=32, stride=16, batch_size=5, pamr=True, pamr_dilations=(1, 2)
    )
    together = segmenter.segment(_images(), vocab, config)
    for image, joint in zip(_images(), together, strict=True):
        [alone] = segmenter.segment([image], vocab, dataclasses.replace(config, batch_size=1))
        assert joint.labels_hw.shape == image.shape[:2]
        np.testing.assert_allclose(joint.confidence_hw, alone.confidence_hw, atol=1e-5)
        margin_ok = np.abs(joint.confidence_hw - alone.confidence_hw) < 1e-5
        assert (joint.labels_hw[margin_ok] == alone.labels_hw[margin_ok]).all()


@pytest.mark.parametrize("shape", [(3, 5, 3), (1, 1, 3), (9, 200, 3)])
@pytest.mark.parametrize("short_side", [None, 32])
def test_tiny_and_odd_images(segmenter, shape, short_side):
    image = np.full(shape, 120, np.uint8)
    [res] = segmenter.segment(
        [image], parse_text("a\nb"), InferenceConfig(short_side=short_side, crop=32, stride=16)
    )
    assert res.labels_hw.shape == shape[:2] and res.labels_hw.dtype == np.uint8
    assert res.confidence_hw.dtype == np.float32
    assert (
        (res.confidence_hw >= 0.5 - 1e-6) & (res.confidence_hw <= 1)
    ).all()  # 2 classes: max prob >= 1/2


def test_inputs_tensor_and_array_agree(segmenter):
    image = _images()[0]
    vocab = parse_text("a\nb\nc")
    config = InferenceConfig(short_side=32, crop=32, stride=16)
    [from_array] = segmenter.segment([image], vocab, config)
    [from_tensor] = segmenter.segment([torch.from_numpy(image).permute(2, 0, 1)], vocab, config)
    np.testing.assert_array_equal(from_array.labels_hw, from_tensor.labels_hw)
    with pytest.raises(ValueError, match="RGB"):
        segmenter.segment([np.zeros((4, 4), np.uint8)], vocab, config)


def test_config_validation():
    with pytest.raises(ValueError, match="stride"):
        InferenceConfig(crop=16, stride=32)
    with pytest.raises(ValueError, match="precision"):
        InferenceConfig(precision="fp8")
    assert Window(0, 0, 0, 1, 1).h == 1


def test_names_in_chunks_give_the_labels_of_all_names_at_once(segmenter):
    """The memory-bounded path is the exact protocol: any split of the names, the same labels."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    lines = [f"thing {i}, object {i}" if i % 3 == 0 else f"thing {i}" for i in range(30)]
    vocabulary = parse_text("\n".join(lines), threshold=0.04)
    base = InferenceConfig(short_side=32, crop=32, stride=16, pamr=True, pamr_dilations=(1, 2))
    replace = dataclasses.replace
    whole = segmenter.segment(images, vocabulary, base)
    for chunk in (1, 7, 39):
        parts = segmenter.segment(images, vocabulary, replace(base, name_chunk=chunk))
        for a, b in zip(whole, parts, strict=True):
            np.testing.assert_array_equal(a.labels_hw, b.labels_hw)
            np.testing.assert_allclose(a.confidence_hw, b.confidence_hw, rtol=1e-5, atol=1e-6)
    assert {int(v) for r in whole for v in np.unique(r.labels_hw)} - {255}  # labels were given


def test_more_than_255_classes_by_hand():
    """Labels beyond 255 (int32 here, uint16 maps in files), 65535 unlabelled."""
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(700, 3, 4, generator=rng)  # N=700 names
    index = torch.arange(700) // 2  # 350 classes, two names each
    thresholds = [None] * 349 + [0.9]
    labels, conf = labels_from_logits(logits, index, 350, 3.0, thresholds, (3, 4), 65535)
    probs = torch.softmax(3.0 * logits, dim=0)  # N x 3 x 4, an independent computation
    class_probs = probs.view(350, 2, 3, 4).amax(dim=1)  # K x 3 x 4
    expected_conf, expected = class_probs.max(dim=0)
    expected = torch.where((expected == 349) & (expected_conf < 0.9), torch.tensor(65535), expected)
    assert labels.dtype == torch.int32 and labels.tolist() == expected.tolist()
    torch.testing.assert_close(conf, expected_conf)


def reference_stitch(windowed, text):
    """Window by window, in order: what the vectorised stitching must equal to the bit."""
    patch = windowed.patch
    canvases = [torch.zeros((text.shape[0], h, w)) for h, w in windowed.sizes_hw]
    counts = [torch.zeros((1, h, w)) for h, w in windowed.sizes_hw]
    for batch in windowed.batches:
        first = batch.windows[0]
        hp, wp = -(-first.h // patch) * patch, -(-first.w // patch) * patch
        logits = torch.einsum("bhwe,ne->bnhw", batch.features, text)
        logits = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)
        for win, window_logits in zip(batch.windows, logits, strict=True):
            region = (slice(None), slice(win.y0, win.y0 + win.h), slice(win.x0, win.x0 + win.w))
            canvases[win.image][region] += window_logits[:, : win.h, : win.w]
            counts[win.image][region] += 1
    return [c / n for c, n in zip(canvases, counts, strict=True)]


@pytest.mark.parametrize(("crop", "stride"), [(32, 16), (32, 8), (24, 24), (40, 16)])
def test_vectorised_stitching_equals_window_by_window_exactly(crop, stride):
    torch.manual_seed(0)
    images = [torch.randn(3, h, w) for h, w in ((37, 61), (64, 64), (20, 90), (5, 9), (120, 200))]
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    text = F.normalize(torch.randn(7, 16), dim=-1)
    weight = torch.randn(16, 3)

    def features_fn(crops):  # B x 3 x h x w -> B x h/8 x w/8 x 16
        pooled = F.avg_pool2d(crops, 8).permute(0, 2, 3, 1)
        return F.normalize(pooled @ weight.T, dim=-1)

    for batch_size in (1, 3, 64):
        config = InferenceConfig(short_side=None, crop=crop, stride=stride, batch_size=batch_size)
        windowed = window_features(images, features_fn, 8, config)
        assert windowed.sizes_hw == sizes
        got = stitch(windowed, text)
        for a, b in zip(got, reference_stitch(windowed, text), strict=True):
            assert torch.equal(a, b)
    # a window never shares a step with one it overlaps, and follows the earlier ones
    windows = plan_windows([(120, 200)], crop, stride)
    step = {int(p): k for k, positions in enumerate(_steps(windows)) for p in positions}
    for i, a in enumerate(windows):
        for j, b in enumerate(windows[:i]):
            if _overlap(a, b):
                assert step[j] < step[i]
    assert len(set(step.values())) < len(windows)


def test_pixels_below_threshold_become_background_when_asked(segmenter):
    """The research repos' ``prob_thd``: below it a pixel is background (class 0), not
    unlabelled; everything else is unchanged."""
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    text = "sky, wall, floor\ncat\ndog\nbird"
    config = InferenceConfig(short_side=32, crop=32, stride=16)
    free = segmenter.segment([image], parse_text(text, background_first_line=True), config)[0]
    cut = float(np.median(free.confidence_hw))  # about half of the pixels fall below it
    below = free.confidence_hw < cut
    assert 0 < below.sum() < below.size
    as_json = parse_text(text, background_first_line=True, threshold=cut).to_json()
    unlabelled = segmenter.segment([image], parse_json(as_json), config)[0]
    background = parse_json({**as_json, "below_threshold": "background"})
    to_background = segmenter.segment([image], background, config)[0]
    np.testing.assert_array_equal(unlabelled.labels_hw, np.where(below, 255, free.labels_hw))
    np.testing.assert_array_equal(to_background.labels_hw, np.where(below, 0, free.labels_hw))
    np.testing.assert_array_equal(to_background.confidence_hw, free.confidence_hw)
    with pytest.raises(ValueError, match="needs a background class"):
        parse_json({"classes": [{"id": 1, "name": "cat"}], "below_threshold": "background"})


def test_a_repeated_name_goes_to_its_first_class(segmenter):
    """SCLIP's object class file lists ``bed`` as background and as a class: in the repos the
    tie goes to the first class, so the second one never wins a pixel; here too."""
    image = np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    config = InferenceConfig(short_side=32, crop=32, stride=16)
    with pytest.raises(ValueError, match="appears twice"):
        parse_text("sky, bed\nbed\ncat")
    both = parse_text("sky, bed\nbed\ncat", repeated_names=True)
    assert parse_json(both.to_json()) == both
    labels = segmenter.segment([image], both, config)[0].labels_hw
    alone = segmenter.segment([image], parse_text("sky, bed\ncat"), config)[0].labels_hw
    assert 1 not in labels
    np.testing.assert_array_equal(labels, np.where(alone == 1, 2, alone))  # same pixels
