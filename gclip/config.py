"""Typed configurations: which dense-feature method runs, how images become label maps, and
what a checkpoint recommends for both.

This module imports no torch, so a driver can validate, layer and fingerprint a run's settings
without paying for it; :mod:`gclip.methods` and :mod:`gclip.inference` do the maths.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
# Where the model runs: "auto" is CUDA on a worker that has a GPU, else the CPU.
DEVICES = ("auto", "cpu", "cuda")
GlobalBlocks = tuple[int, ...] | Literal["auto"] | None

# The reconstruction's defaults are stated for ViT-B (12 blocks); other depths resolve to "auto".
_REFERENCE_DEPTH = 12
_REFERENCE_GLOBAL_BLOCKS = (6, 7)
_REFERENCE_CS_START = 7

# What a checkpoint folder may ship beside its weights (see :class:`ShippedSettings`).
SHIPPED_FILE = "gclip.json"

# The MethodConfig fields read by Attention Map Fusion and by Channel Suppression.
_FUSION_OPTIONS = ("global_blocks", "head_average", "auto_ratio", "auto_fraction")
_SUPPRESSION_OPTIONS = ("cs_start_block", "cs_enabled")


@dataclass(frozen=True, slots=True)
class MethodSpec:
    """What the rest of the code asks about a dense-feature method; its maths is
    ``gclip.methods.LAST_BLOCKS[name]``.

    Attributes:
        name: the method's name in configs, flags and records.
        last_block: the last block's attention, in the notation of ``docs/gclip-method.md``.
        fuses_global_blocks: averages the attention maps of ``global_blocks`` into the last
            block's (AMF), so it reads ``global_blocks`` and ``head_average``, and with
            ``global_blocks="auto"`` needs calibration images (``auto_ratio``,
            ``auto_fraction``).
        suppresses_channels: re-normalises an FFN outlier channel from ``cs_start_block`` on
            (reads ``cs_start_block`` and ``cs_enabled``).
        keeps_residual: the last block keeps its residual and FFN; otherwise its attention
            output is the token.
        own_options: further :class:`MethodConfig` fields that only this method reads.
    """

    name: str
    last_block: str
    fuses_global_blocks: bool = False
    suppresses_channels: bool = False
    keeps_residual: bool = False
    own_options: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        """The :class:`MethodConfig` fields this method reads, ``name`` apart."""
        return (
            *(_FUSION_OPTIONS if self.fuses_global_blocks else ()),
            *(_SUPPRESSION_OPTIONS if self.suppresses_channels else ()),
            *self.own_options,
        )


# The one list of methods: configs, flags, the schema's enum (a test) and gclip.methods'
# dispatch (checked at its import) follow it.
METHOD_SPECS: Mapping[str, MethodSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            MethodSpec(
                "gclip",
                "(softmax(s q q^T) + sum of the global blocks' maps) / (1 + |G|), then v",
                fuses_global_blocks=True,
                suppresses_channels=True,
            ),
            MethodSpec("clearclip", "softmax(s q q^T) v"),
            MethodSpec("naclip", "softmax(s k k^T + Omega) v", own_options=("naclip_sigma",)),
            MethodSpec("sclip", "(softmax(s q q^T) + softmax(s k k^T)) v", keeps_residual=True),
            MethodSpec("maskclip", "v (identity attention)"),
            MethodSpec("clip", "softmax(s q k^T) v (open_clip's own block)", keeps_residual=True),
        )
    }
)
METHODS = tuple(METHOD_SPECS)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``name``; ``ValueError`` naming the known methods otherwise."""
    spec = METHOD_SPECS.get(name)
    if spec is None:
        raise ValueError(f"Unknown method {name!r}; choose one of {', '.join(METHODS)}.")
    return spec


@dataclass(frozen=True, slots=True)
class MethodConfig:
    """Which dense-feature method to run, with every reconstructed *(guess)* as an option.

    Attributes:
        name: one of :data:`METHODS` (see :data:`METHOD_SPECS` for what each reads).
        global_blocks: 0-based blocks whose attention maps GCLIP fuses (AMF). ``None`` means
            ``(6, 7)`` on 12-block backbones and ``"auto"`` otherwise; ``"auto"`` detects the
            first block where a global token emerges (see :func:`gclip.methods.find_global_blocks`).
            Only methods that fuse global blocks (GCLIP) read it; others resolve it to ``()``.
        head_average: average attention maps over heads before fusing (else fuse per head).
        cs_start_block: first block whose FFN output channel is suppressed. ``None`` means 7
            on 12-block backbones, else the first global block.
        cs_enabled: apply Channel Suppression (GCLIP only).
        naclip_sigma: standard deviation, in patches, of NACLIP's neighbourhood Gaussian.
        auto_ratio: a token is global when it receives this many times the uniform attention.
        auto_fraction: ... in more than this fraction of the calibration images.
    """

    name: str = "gclip"
    global_blocks: GlobalBlocks = None
    head_average: bool = True
    cs_start_block: int | None = None
    cs_enabled: bool = True
    naclip_sigma: float = 5.0
    auto_ratio: float = 10.0
    auto_fraction: float = 0.5

    def __post_init__(self) -> None:
        method_spec(self.name)
        gb = self.global_blocks
        if isinstance(gb, list):
            object.__setattr__(self, "global_blocks", gb := tuple(gb))
        if not (gb is None or gb == "auto" or isinstance(gb, tuple)):
            raise ValueError(
                f"global_blocks must be a list of block indices, 'auto' or null; got {gb!r}."
            )
        if isinstance(gb, tuple) and not all(isinstance(b, int) and b >= 0 for b in gb):
            raise ValueError(f"global_blocks must be non-negative block indices, got {gb}.")
        if self.cs_start_block is not None and self.cs_start_block < 0:
            raise ValueError(f"cs_start_block must be >= 0, got {self.cs_start_block}.")
        if self.naclip_sigma <= 0:
            raise ValueError(f"naclip_sigma must be positive, got {self.naclip_sigma}.")
        if self.auto_ratio <= 0 or not 0 <= self.auto_fraction < 1:
            raise ValueError(
                "auto_ratio must be > 0 and auto_fraction in [0, 1); got "
                f"{self.auto_ratio} and {self.auto_fraction}."
            )

    def resolve(self, depth: int) -> MethodConfig:
        """Replace ``None`` defaults with concrete values for a backbone ``depth`` blocks deep.

        GCLIP keeps ``"auto"`` (it needs calibration images: :meth:`with_global_blocks`);
        a method that fuses no global blocks gets ``()``, one without Channel Suppression a
        ``cs_start_block`` of ``None``, so the peers are always fully resolved here.

        Raises:
            ValueError: a block index is outside this depth; the message names the range.
        """
        spec = self.spec
        gb = self.global_blocks if spec.fuses_global_blocks else ()
        if gb is None:
            gb = _REFERENCE_GLOBAL_BLOCKS if depth == _REFERENCE_DEPTH else "auto"
        if spec.fuses_global_blocks and isinstance(gb, tuple):
            bad = [b for b in gb if not 0 <= b < depth - 1]
            if bad or not gb:
                raise ValueError(
                    f"global_blocks {gb} must be non-empty indices in [0, {depth - 2}] for this "
                    f"{depth}-block backbone (the last block {depth - 1} is the one reshaped)."
                )
        cs = self.cs_start_block if spec.suppresses_channels else None
        if spec.suppresses_channels and cs is None:
            if depth == _REFERENCE_DEPTH:
                cs = _REFERENCE_CS_START
            elif isinstance(gb, tuple) and gb:
                cs = min(gb)
        if cs is not None and not 0 <= cs < depth:
            raise ValueError(
                f"cs_start_block {cs} is outside [0, {depth - 1}] for this {depth}-block backbone."
            )
        return replace(self, global_blocks=gb, cs_start_block=cs)

    def with_global_blocks(self, blocks: tuple[int, ...]) -> MethodConfig:
        """Fix ``"auto"`` to detected ``blocks``; CS follows them unless set explicitly."""
        cs: int | None = None
        if self.spec.suppresses_channels:
            cs = self.cs_start_block if self.cs_start_block is not None else min(blocks)
        return replace(self, global_blocks=tuple(blocks), cs_start_block=cs)

    @property
    def spec(self) -> MethodSpec:
        """What this method reads and does (:data:`METHOD_SPECS`)."""
        return METHOD_SPECS[self.name]

    @property
    def needs_calibration(self) -> bool:
        """GCLIP with ``global_blocks="auto"``: the blocks come from calibration images."""
        return self.spec.fuses_global_blocks and self.global_blocks in ("auto", None)

    @property
    def uses_channel_suppression(self) -> bool:
        return self.spec.suppresses_channels and self.cs_enabled

    @property
    def recorded_blocks(self) -> tuple[int, ...]:
        """The blocks whose attention maps the last block fuses (``()`` for the peers)."""
        if not self.spec.fuses_global_blocks:
            return ()
        assert isinstance(self.global_blocks, tuple), "resolve global blocks before running"
        return self.global_blocks


@dataclass(frozen=True, slots=True)
class InferenceConfig:
    """How images become label maps. Defaults follow the ClearCLIP protocol.

    Attributes:
        short_side: resize so the shorter side has this many pixels; ``None`` keeps the size.
        max_long_side: but never so the longer side has more than this many pixels (then the
            long side gets exactly this many: mmcv's keep-ratio resize to ``(max_long_side,
            short_side)``); caps a thin strip's canvas, and with ``short_side=None`` a large
            image's. ``None``: no cap.
        crop: sliding-window side, in resized pixels.
        stride: step between windows; the last window of a row or column is shifted inside.
        batch_size: windows per forward pass, drawn from all images of a call.
        logit_scale: temperature of the softmax over names (cosine similarities x scale).
        pamr: refine the stitched logits with PAMR before the softmax.
        pamr_iterations: PAMR iterations.
        pamr_dilations: PAMR neighbourhood dilations, in resized pixels.
        precision: ``auto`` (bf16 autocast for the vision forward on CUDA, fp32 elsewhere),
            ``fp32``, or ``fp16`` / ``bf16`` autocast.
        name_chunk: names whose logits are held at once (canvases, PAMR, upsampling): bounds
            memory for vocabularies of thousands of names; changes no label.
    """

    short_side: int | None = 448
    max_long_side: int | None = 2048
    crop: int = 448
    stride: int = 224
    batch_size: int = 16
    logit_scale: float = 40.0
    pamr: bool = False
    pamr_iterations: int = 10
    pamr_dilations: tuple[int, ...] = (8, 16)
    precision: str = "auto"
    name_chunk: int = 256

    def __post_init__(self) -> None:
        if isinstance(self.pamr_dilations, list):
            object.__setattr__(self, "pamr_dilations", tuple(self.pamr_dilations))
        if self.short_side is not None and self.short_side < 1:
            raise ValueError(f"short_side must be >= 1 or None, got {self.short_side}.")
        if self.max_long_side is not None and self.max_long_side < 1:
            raise ValueError(
                f"max_long_side must be >= 1 or None (no cap), got {self.max_long_side}."
            )
        if self.crop < 1 or self.stride < 1:
            raise ValueError(
                f"crop and stride must be >= 1, got crop={self.crop}, stride={self.stride}."
            )
        if self.stride > self.crop:
            raise ValueError(
                f"stride {self.stride} > crop {self.crop} would leave pixels uncovered."
            )
        if self.batch_size < 1 or self.name_chunk < 1:
            raise ValueError(
                f"batch_size and name_chunk must be >= 1, got {self.batch_size} and "
                f"{self.name_chunk}."
            )
        if self.logit_scale <= 0:
            raise ValueError(f"logit_scale must be positive, got {self.logit_scale}.")
        if self.pamr_iterations < 1 or not self.pamr_dilations or min(self.pamr_dilations) < 1:
            raise ValueError(
                "pamr_iterations must be >= 1 and pamr_dilations a non-empty list of positive "
                f"integers; got {self.pamr_iterations} and {list(self.pamr_dilations)}."
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}."
            )


@dataclass(frozen=True, slots=True)
class ShippedSettings:
    """What a checkpoint recommends, from ``gclip.json`` beside its weights.

    The recommendations sit between the library defaults and the user's own settings: they
    apply to every field the user leaves unset.

    Attributes:
        method_options: :class:`MethodConfig` fields chosen for GCLIP (the global blocks for
            the model's depth, for example); ask :meth:`method_options_for` which of them a
            method takes.
        inference: :class:`InferenceConfig` fields (the scale the model was trained at).
        templates: prompt templates the model was trained with, if any.
    """

    method_options: Mapping[str, Any] = field(default_factory=dict)
    inference: Mapping[str, Any] = field(default_factory=dict)
    templates: tuple[str, ...] | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str) -> ShippedSettings:
        """Parse and check a ``gclip.json`` document; ``source`` names it in errors."""
        method_options = dict(data.get("method_options", {}))
        inference = dict(data.get("inference", {}))
        unknown = [
            *(f"method_options.{k}" for k in method_options if k not in field_names(MethodConfig)),
            *(f"inference.{k}" for k in inference if k not in field_names(InferenceConfig)),
        ]
        if "name" in method_options or unknown:
            raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown) or 'name'}.")
        build(MethodConfig, method_options)  # fail on a bad value here, not on a worker
        build(InferenceConfig, inference)
        templates = data.get("templates")
        return cls(method_options, inference, tuple(templates) if templates else None)

    def method_options_for(self, method: str) -> dict[str, Any]:
        """The shipped method options that ``method`` takes: those it reads.

        The options are chosen for GCLIP (its global blocks for this depth); a peer reads no
        global blocks nor Channel Suppression, so it takes none of them and its config (and
        fingerprint) stays the library's.

        Raises:
            ValueError: ``method`` is not one of :data:`METHODS`.
        """
        reads = method_spec(method).options
        return {k: v for k, v in self.method_options.items() if k in reads}


def read_shipped(folder: Path) -> ShippedSettings:
    """The settings shipped in ``folder`` (a local-dir model), or none if it ships none."""
    path = folder / SHIPPED_FILE
    if not path.is_file():
        return ShippedSettings()
    return ShippedSettings.from_json(json.loads(path.read_text(encoding="utf-8")), str(path))


Config = TypeVar("Config", MethodConfig, InferenceConfig)


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The dataclass fields of a config class, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls))


def build(cls: type[Config], values: Mapping[str, Any]) -> Config:
    """``cls(**values)`` with JSON lists turned into tuples and unknown keys named."""
    unknown = sorted(set(values) - set(field_names(cls)))
    if unknown:
        raise ValueError(
            f"Unknown {cls.__name__} setting(s): {', '.join(unknown)}; "
            f"known: {', '.join(field_names(cls))}."
        )
    typed: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**typed)


def to_json(config: MethodConfig | InferenceConfig) -> dict[str, Any]:
    """A config as JSON values (tuples as lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
