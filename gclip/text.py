"""Text side: vocabulary names -> prompt-ensembled, L2-normalised text embeddings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from open_clip import OPENAI_IMAGENET_TEMPLATES
from tqdm import tqdm

from gclip.vocabulary import Vocabulary

Template = Callable[[str], str] | str


def render(template: Template, name: str) -> str:
    """A prompt from a template: a callable, or a string with one ``{}``."""
    return template(name) if callable(template) else template.format(name)


class TextEncoder:
    """Embeds names with a prompt ensemble; each name is encoded once and cached.

    Args:
        model: an open_clip ``CLIP`` (its ``encode_text`` is used, weights untouched).
        tokenizer: the model's open_clip tokenizer.
        templates: prompt templates; default the 80 OpenAI ImageNet templates.
        batch_size: prompts per ``encode_text`` call (bounds memory for large vocabularies).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[list[str]], torch.Tensor],
        templates: Sequence[Template] = OPENAI_IMAGENET_TEMPLATES,
        batch_size: int = 256,
    ) -> None:
        if not templates:
            raise ValueError("At least one prompt template is needed, e.g. 'a photo of a {}.'.")
        self._model = model
        self._tokenizer = tokenizer
        self._templates = tuple(templates)
        self._batch_size = batch_size
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed_names(self, names: Sequence[str]) -> torch.Tensor:
        """``N x E`` float32 embeddings: per name, the renormalised mean over templates."""
        missing = [n for n in dict.fromkeys(names) if n not in self._cache]
        if missing:
            self._cache.update(zip(missing, self._encode(missing), strict=True))
        return torch.stack([self._cache[n] for n in names])  # N x E

    def embed(self, vocabulary: Vocabulary) -> torch.Tensor:
        """``N_names x E`` embeddings of ``vocabulary.names`` (rows follow that order)."""
        return self.embed_names(vocabulary.names)

    def _encode(self, names: Sequence[str]) -> list[torch.Tensor]:
        prompts = [render(t, n) for n in names for t in self._templates]  # N*T
        device = next(self._model.parameters()).device
        chunks = []
        # Thousands of names (LVIS, Objects365) take a while: say so.
        progress = tqdm(
            total=len(prompts), desc="text embeddings", unit="prompt", disable=len(names) < 256
        )
        for start in range(0, len(prompts), self._batch_size):
            tokens = self._tokenizer(prompts[start : start + self._batch_size]).to(device)
            chunks.append(F.normalize(self._model.encode_text(tokens).float(), dim=-1))
            progress.update(len(tokens))
        progress.close()
        per_prompt = torch.cat(chunks).view(len(names), len(self._templates), -1)  # N x T x E
        per_name = F.normalize(per_prompt.mean(dim=1), dim=-1)  # N x E
        return list(per_name.cpu())
