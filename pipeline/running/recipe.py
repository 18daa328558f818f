"""The worker's segmenter recipe, resolved once per run before any shard is dispatched.

:func:`resolve_recipe` runs where torch is (a Ray task, or in process): it loads the model,
fixes every setting that depends on it (the depth's default blocks, GCLIP's ``"auto"``
calibration on the manifest's first images) and reports what it found. Every worker then
builds the same :class:`SegmenterSpec`, which holds nothing left to decide.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gclip import MethodConfig
from pipeline.formats.checkpoints import file_digest, localize
from pipeline.formats.images import decode
from pipeline.formats.storage import read_bytes

if TYPE_CHECKING:
    import gclip


@dataclass(frozen=True, slots=True)
class SegmenterSpec:
    """Builds a :class:`gclip.Segmenter` when called (on the worker, not the driver).

    Attributes:
        model: open_clip name, ``demo``, ``local-dir:PATH|URI`` or ``hf-hub:ORG/REPO``.
        pretrained: tag, checkpoint path or URI, or ``none``.
        method: the method config, resolved by :func:`resolve_recipe` for real runs.
        device: ``auto`` picks CUDA when the worker sees a GPU, else CPU.
    """

    model: str
    pretrained: str | None
    method: MethodConfig = field(default_factory=MethodConfig)
    device: str = "auto"

    def __call__(self) -> gclip.Segmenter:
        import torch

        import gclip

        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, pretrained = localize(self.model, self.pretrained)
        return gclip.load_segmenter(model, pretrained, self.method, device=device)


@dataclass(frozen=True, slots=True)
class Resolution:
    """What resolving the recipe found: the spec every worker builds, and the model's facts.

    Attributes:
        spec: the recipe with a fully resolved method config.
        model: ``depth``, ``patch_size``, ``width``, ``weights_sha256`` (or the random seed)
            of the loaded model; empty when a fake segmenter stands in for it.
        sources: where resolved method settings came from (``"model depth"``,
            ``"calibration"``), by dotted name.
    """

    spec: SegmenterSpec
    model: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def resolve_recipe(spec: SegmenterSpec, calibration_uris: tuple[str, ...], side: int) -> Resolution:
    """Load the model once on the CPU and resolve ``spec.method`` against it.

    Args:
        spec: the requested recipe (``global_blocks`` may be ``None`` or ``"auto"``).
        calibration_uris: images for GCLIP's ``"auto"`` blocks (the manifest's first ones).
        side: calibration crop side in pixels (rounded down to the patch size).

    Raises:
        ValueError, gclip.WeightsUnavailableError, gclip.CheckpointError: the model or its
            options cannot work; the message names the file or option.
    """
    import gclip

    model, pretrained = localize(spec.model, spec.pretrained)
    loaded = gclip.load_model(model, pretrained, device="cpu")
    segmenter = gclip.load_segmenter(loaded, method=spec.method)
    sources = {}
    if spec.method.spec.fuses_global_blocks:
        if spec.method.global_blocks is None and segmenter.method.global_blocks != "auto":
            sources["method.global_blocks"] = "model depth"
        if spec.method.cs_start_block is None:
            sources["method.cs_start_block"] = "model depth"
    if segmenter.method.needs_calibration:
        segmenter.calibrate(_calibration_batch(segmenter, calibration_uris, side))
        sources["method.global_blocks"] = "calibration"
        if spec.method.cs_start_block is None:
            sources["method.cs_start_block"] = "calibration"
    digest = file_digest(loaded.weights_file) if loaded.weights_file else None
    facts: dict[str, Any] = {
        "depth": segmenter.depth,
        "patch_size": segmenter.patch_size,
        "weights": _weights_used(loaded.weights_file, digest, loaded.seed),
        "weights_sha256": digest,
        "random_seed": loaded.seed,
    }
    resolved = SegmenterSpec(spec.model, spec.pretrained, segmenter.method, spec.device)
    return Resolution(resolved, facts, sources)


def _weights_used(weights_file: str | None, digest: str | None, seed: int | None) -> str:
    """What the run records as its weights: the file's name and digest, or the random seed."""
    if weights_file and digest:
        return f"{Path(weights_file).name} (sha256 {digest[:12]})"
    return f"random weights (seed {seed})" if seed is not None else "unknown"


def _calibration_batch(segmenter: gclip.Segmenter, uris: tuple[str, ...], side: int) -> Any:
    """``B x 3 x c x c`` centre crops of the calibration images (c a patch multiple)."""
    import torch

    patch = segmenter.patch_size
    side = max(patch, side // patch * patch)
    crops = []
    for uri in uris:
        try:
            image = segmenter.preprocess(decode(read_bytes(uri)), short_side=side)
        except Exception:  # an unreadable calibration image is skipped, not fatal
            continue
        h, w = image.shape[1:]
        top, left = (h - side) // 2, (w - side) // 2
        crops.append(image[:, top : top + side, left : left + side])  # 3 x c x c
    if not crops:
        raise ValueError(
            "global_blocks='auto' needs calibration images, and none of "
            f"{list(uris)[:3]} could be read; set global_blocks explicitly."
        )
    return torch.stack(crops)  # B x 3 x c x c
