"""Text embeddings: prompt ensembles computed once per name."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip import OPENAI_IMAGENET_TEMPLATES

from gclip import parse_text
from gclip.text import TextEncoder


def test_prompt_ensemble_matches_equation_and_is_cached(clip12, tokenizer):
    calls = []

    def counting_tokenizer(texts):
        calls.append(len(texts))
        return tokenizer(texts)

    encoder = TextEncoder(
        clip12, counting_tokenizer, templates=["a photo of a {}.", lambda c: f"art of {c}"]
    )
    vocab = parse_text("red circle, crimson circle\nblue square")
    emb = encoder.embed(vocab)
    assert emb.shape == (3, 32)
    with torch.no_grad():
        prompts = F.normalize(
            clip12.encode_text(tokenizer(["a photo of a red circle.", "art of red circle"])), dim=-1
        )
    torch.testing.assert_close(emb[0], F.normalize(prompts.mean(0), dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert calls == [6]
    encoder.embed(vocab)
    encoder.embed(parse_text("blue square\ngreen"))  # only 'green' is new
    assert calls == [6, 2]


def test_default_templates_are_the_80_openai_ones(clip12, tokenizer):
    seen = []
    encoder = TextEncoder(clip12, lambda texts: seen.extend(texts) or tokenizer(texts))
    encoder.embed_names(["cat"])
    assert len(seen) == 80
    assert seen == [t("cat") for t in OPENAI_IMAGENET_TEMPLATES]
