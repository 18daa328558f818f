"""The recipe for a worker's segmenter: small, picklable, built once inside each worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import gclip


@dataclass(frozen=True, slots=True)
class SegmenterSpec:
    """Builds a :class:`gclip.Segmenter` when called (on the worker, not the driver).

    ``device="auto"`` picks CUDA when the worker sees a GPU, else CPU.
    """

    model: str
    pretrained: str | None
    method: str
    method_options: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"

    def __call__(self) -> gclip.Segmenter:
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = gclip.load_model(self.model, self.pretrained, device=device)
        # Options shipped with a checkpoint (the demo model's global blocks) are GCLIP's; the
        # user's options win over them.
        shipped = loaded.recommended if self.method == "gclip" else {}
        options = {
            k: tuple(v) if isinstance(v, list) else v
            for k, v in {**shipped, **self.method_options}.items()
        }
        return gclip.Segmenter.from_open_clip(
            loaded.model,
            loaded.tokenizer,
            method=self.method,
            templates=loaded.templates,
            **options,
        )
