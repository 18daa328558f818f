"""The recipe for a worker's segmenter: small, picklable, built once inside each worker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

import gclip
from pipeline.images import decode
from pipeline.storage import read_bytes


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
    calibration_uris: tuple[str, ...] = ()
    calibration_crop: int = 224

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
        segmenter = gclip.Segmenter.from_open_clip(
            loaded.model,
            loaded.tokenizer,
            method=self.method,
            templates=loaded.templates,
            **options,
        )
        if segmenter.method.global_blocks == "auto":
            # Every worker calibrates on the same images, so all of them (and a resumed run)
            # fuse the same blocks; calibrating on whatever shard came first would not.
            segmenter.calibrate(self._calibration_batch(segmenter))
        return segmenter

    def _calibration_batch(self, segmenter: gclip.Segmenter) -> torch.Tensor:
        """``B x 3 x c x c`` centre crops of the calibration images (c a patch multiple)."""
        patch = segmenter.patch_size
        side = max(patch, self.calibration_crop // patch * patch)
        crops = []
        for uri in self.calibration_uris:
            try:
                image = segmenter.preprocess(decode(read_bytes(uri)), short_side=side)
            except Exception:  # an unreadable calibration image is skipped, not fatal
                continue
            h, w = image.shape[1:]
            top, left = (h - side) // 2, (w - side) // 2
            crops.append(image[:, top : top + side, left : left + side])
        if not crops:
            raise ValueError(
                "global_blocks='auto' needs calibration images, and none of "
                f"{list(self.calibration_uris)[:3]} could be read; set global_blocks explicitly."
            )
        return torch.stack(crops)
