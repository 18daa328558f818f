"""Segmenter.image_embeddings is open_clip's own encode_image on the model's eval transform."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

import gclip
from gclip.catalog import local_dir


def images(count=4, seed=0):
    """Odd sizes: smaller and larger than the model's resolution, portrait and landscape."""
    rng = np.random.default_rng(seed)
    sizes = [(20, 45), (97, 64), (300, 210), (64, 64)][:count]
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]


def reference(model, preprocess, image_hwc):
    """open_clip's documented use: encode_image(preprocess(PIL image)), then L2-normalised."""
    with torch.no_grad():
        features = model.encode_image(preprocess(Image.fromarray(image_hwc)).unsqueeze(0))
    return (features / features.norm(dim=-1, keepdim=True))[0].numpy()


def test_a_random_weight_model_embeds_as_open_clip_does(clip6, tokenizer):
    model = clip6  # random weights, 32 px, no preprocessing config of its own
    # A model built without a preprocessing config: open_clip's defaults, at its image size.
    preprocess = open_clip.image_transform(
        model.visual.image_size,
        is_train=False,
        mean=open_clip.OPENAI_DATASET_MEAN,
        std=open_clip.OPENAI_DATASET_STD,
    )
    segmenter = gclip.Segmenter.from_open_clip(model, tokenizer, "gclip", global_blocks=(4,))
    batch = images()
    embedding_be = segmenter.image_embeddings(batch)
    assert embedding_be.shape == (4, 32) and embedding_be.dtype == np.float32
    expected = np.stack([reference(model, preprocess, im) for im in batch])
    np.testing.assert_allclose(embedding_be, expected, atol=2e-6)
    np.testing.assert_allclose(np.linalg.norm(embedding_be, axis=1), 1.0, atol=1e-6)
    # One image at a time gives the same rows as the batch.
    one_by_one = np.concatenate([segmenter.image_embeddings([im]) for im in batch])
    np.testing.assert_allclose(one_by_one, embedding_be, atol=2e-6)
    # Embedding never touches the weights the labels use (the network stays unmodified).
    before = {k: v.clone() for k, v in model.state_dict().items()}
    segmenter.image_embeddings(batch)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_demo_model_embeds_as_open_clip_does():
    """The demo checkpoint records its own preprocessing (64 px, mean 0.5, std 0.25): the
    transform open_clip returns from create_model_and_transforms is the one used."""
    segmenter = gclip.load_segmenter(gclip.DEMO_MODEL)
    folder = local_dir(gclip.DEMO_MODEL)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    model.eval()
    batch = images()
    expected = np.stack([reference(model, preprocess, im) for im in batch])
    embedding_be = segmenter.image_embeddings(batch)
    assert embedding_be.shape == (4, segmenter.embedding_dim) == (4, 64)
    np.testing.assert_allclose(embedding_be, expected, atol=2e-6)
    # Distinct images, distinct embeddings (a constant output would pass the norm check).
    assert np.abs(embedding_be[0] - embedding_be[1]).max() > 1e-3
    assert segmenter.image_embeddings([]).shape == (0, 64)


@pytest.mark.slow
def test_a_random_weight_vit_b_16_embeds_as_open_clip_does():
    """The issue's model: ViT-B/16 with random weights, built by open_clip with its own eval
    transform (224 px, OpenAI mean and std), against the segmenter built on the same model."""
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained=None)
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    segmenter = gclip.Segmenter.from_open_clip(model, tokenizer, "gclip")
    batch = images(3, seed=1)
    expected = np.stack([reference(model, preprocess, im) for im in batch])
    embedding_be = segmenter.image_embeddings(batch)
    assert embedding_be.shape == (3, 512)
    np.testing.assert_allclose(embedding_be, expected, atol=1e-4)
    assert np.abs(embedding_be[0] - embedding_be[1]).max() > 1e-3


def test_a_non_rgb_array_is_refused(clip6, tokenizer):
    segmenter = gclip.Segmenter.from_open_clip(clip6, tokenizer, "clip")
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        segmenter.image_embeddings([np.zeros((8, 8), np.uint8)])
