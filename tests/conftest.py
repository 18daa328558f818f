"""Shared fixtures: tiny random-weight open_clip models (CPU, seconds to build)."""

from __future__ import annotations

import open_clip
import pytest
import torch


def tiny_clip(
    depth: int = 12, width: int = 64, heads: int = 4, patch: int = 8, image: int = 32, seed: int = 0
):
    """A random open_clip CLIP with a ViT tower ``depth`` blocks deep (pretrained grid image/patch)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(
            layers=depth, width=width, head_width=width // heads, patch_size=patch, image_size=image
        ),
        text_cfg=open_clip.CLIPTextCfg(
            context_length=16, vocab_size=49408, width=32, heads=2, layers=1
        ),
    )
    # Random init leaves some tensors at exactly 0/1 (biases, LayerNorm); jitter them so that
    # every weight takes part in the equations under test.
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-16", context_length=16)


@pytest.fixture(scope="session")
def clip12():
    return tiny_clip(depth=12)


@pytest.fixture(scope="session")
def clip6():
    return tiny_clip(depth=6, seed=1)
