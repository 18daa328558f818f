"""The run configuration: one frozen record, one home for defaults, and its fingerprint.

``--config FILE`` (JSON, ``schemas/run_config.schema.json``) and CLI flags are overrides of the
defaults below; the resolved config is written to ``OUTPUT/run.json`` and its fingerprint, over
everything that changes labels, is checked when a run resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import schemas
from gclip import InferenceConfig, MethodConfig


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a labelling run needs.

    Attributes:
        manifest: Parquet file, folder or glob (local path, ``file://`` or ``s3://``).
        vocabulary: vocabulary file (``.txt`` or ``.json``).
        output: output folder (local path or ``s3://``).
        model: open_clip model name, ``demo``, ``local-dir:...`` or ``hf-hub:...``; default
            the reference backbone of the method, ViT-B/16 with OpenAI weights.
        pretrained: open_clip tag, checkpoint path, or ``none`` (random weights).
        method: dense-feature method (``gclip`` ...).
        method_options: :class:`gclip.MethodConfig` fields other than ``name``.
        inference: :class:`gclip.InferenceConfig` fields.
        background_first_line: the vocabulary's first line is background (``cls_voc21.txt``).
        threshold: vocabulary-wide minimum probability (overrides the file's).
        shard_size: images per shard.
        num_workers: model actors (one GPU each where GPUs exist).
        images_per_call: images handed to the segmenter at once (their windows share batches).
        decode_threads: image-decoding threads per worker.
        max_attempts: tries per shard when its worker dies.
        png_labels: also write indexed PNG label maps.
        address: Ray address; ``None`` starts an embedded local Ray.
        device: ``auto`` (CUDA when the worker has a GPU), ``cpu`` or ``cuda``.
    """

    manifest: str
    vocabulary: str
    output: str
    model: str = "ViT-B-16-quickgelu"
    pretrained: str | None = "openai"
    method: str = "gclip"
    method_options: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    background_first_line: bool = False
    threshold: float | None = None
    shard_size: int = 256
    num_workers: int = 1
    images_per_call: int = 8
    decode_threads: int = 4
    max_attempts: int = 3
    png_labels: bool = False
    address: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        schemas.validate(self.to_json(), "run_config")
        MethodConfig(name=self.method, **_tuples(self.method_options))  # fail now, not on a worker
        self.inference_config()

    def inference_config(self) -> InferenceConfig:
        return InferenceConfig(**_tuples(self.inference))

    def method_config(self) -> MethodConfig:
        return MethodConfig(name=self.method, **_tuples(self.method_options))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def labelling_fingerprint(self, vocabulary_fingerprint: str) -> str:
        """sha256 over what changes labels: weights, method, vocabulary, inference settings."""
        keyed = {
            "model": self.model,
            "pretrained": self.pretrained,
            "method": dataclasses.asdict(self.method_config()),
            # batch_size only groups windows; results are equal for any value (a tested property)
            "inference": {
                k: v
                for k, v in dataclasses.asdict(self.inference_config()).items()
                if k != "batch_size"
            },
            "vocabulary": vocabulary_fingerprint,
            "background_first_line": self.background_first_line,
            "threshold": self.threshold,
            "shard_size": self.shard_size,  # shard files are keyed by position
            "png_labels": self.png_labels,
        }
        return hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()


def load_run_config(file_values: dict[str, Any] | None, overrides: dict[str, Any]) -> RunConfig:
    """Defaults <- ``--config`` file values <- CLI overrides (``None`` means not given)."""
    values: dict[str, Any] = {}
    if file_values:
        schemas.validate(file_values, "run_config")
        values.update(file_values)
    for key, value in overrides.items():
        if value is None:
            continue
        if key in ("method_options", "inference"):
            values[key] = {**values.get(key, {}), **value}
        else:
            values[key] = value
    missing = [k for k in ("manifest", "vocabulary", "output") if k not in values]
    if missing:
        raise ValueError(f"Missing required setting(s): {', '.join('--' + m for m in missing)}.")
    return RunConfig(**values)


def _tuples(options: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back to the tuples the frozen configs hold."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
