"""CUDA and mixed precision: run only where a GPU is present (never required)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gclip import InferenceConfig, Segmenter, parse_text

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_autocast_matches_fp32_on_cuda(clip12, tokenizer, precision):
    model = clip12.to("cuda")
    try:
        seg = Segmenter.from_open_clip(model, tokenizer, templates=["a photo of a {}."])
        images = [
            np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8) for i in range(3)
        ]
        vocab = parse_text("a\nb\nc")
        base = InferenceConfig(short_side=32, crop=32, stride=16)
        full = seg.segment(images, vocab, base)
        mixed = seg.segment(
            images, vocab, InferenceConfig(short_side=32, crop=32, stride=16, precision=precision)
        )
        for a, b in zip(full, mixed, strict=True):
            assert np.abs(a.confidence_hw - b.confidence_hw).max() < 0.05
            assert (a.labels_hw == b.labels_hw).mean() > 0.95
        features = seg.dense_features(torch.randn(2, 3, 32, 32, device="cuda"))
        assert features.device.type == "cuda" and features.dtype == torch.float32
    finally:
        clip12.to("cpu")
