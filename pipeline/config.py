"""The run configuration: one frozen record of typed configs, built from layers, fingerprinted.

Settings come in layers, each over the one before: the library defaults (the dataclasses
themselves, their one home), what the model's checkpoint ships (``gclip.json`` beside its
weights), the ``--config`` file (JSON, ``schemas/run_config.schema.json``), then the flags.
:func:`load_run_config` builds the :class:`RunConfig` and records where every setting that is
not a default came from; ``OUTPUT/run.json`` keeps both. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import schemas
from gclip import InferenceConfig, MethodConfig
from gclip.config import build, to_json
from pipeline.errors import InputError
from pipeline.formats.checkpoints import shipped_settings
from pipeline.formats.instances import MIN_AREA
from pipeline.formats.layout import FORMAT_VERSION

FILE, FLAG, CHECKPOINT = "config file", "flag", "checkpoint"
DEFAULT_MODEL = "ViT-B-16-quickgelu"  # the method's reference backbone, with OpenAI weights
_NESTED = ("method", "inference")


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a labelling run needs.

    Attributes:
        manifest: Parquet file, folder or glob (local path, ``file://`` or ``s3://``).
        vocabulary: vocabulary file (``.txt`` or ``.json``).
        output: output folder (local path or ``s3://``).
        model: open_clip model name, ``demo``, ``local-dir:PATH|URI`` or ``hf-hub:...``;
            default the reference backbone of the method, ViT-B/16 with OpenAI weights.
        pretrained: open_clip tag, checkpoint path or URI (``s3://...``), or ``none``.
        method: the dense-feature method and its options.
        inference: how images become label maps.
        background_first_line: the vocabulary's first line is background (``cls_voc21.txt``).
        threshold: vocabulary-wide minimum probability (overrides the file's).
        shard_size: images per shard.
        num_workers: model actors, one GPU each where GPUs exist; ``None``: one per GPU of
            the cluster, else one.
        model_cpus: CPUs each model actor holds; ``None``: 1 beside a GPU (the host tasks,
            reading, decoding, encoding and writing, hold one each of the rest), else an even
            share of the CPUs (the host tasks, light beside a model on a CPU, run unreserved).
        images_per_call: images handed to the segmenter at once (their windows share batches).
        decode_threads: image-decoding threads per worker.
        max_attempts: tries per shard when its worker dies, runs out of memory or times out.
        shard_timeout_s: deadline of one shard attempt, after which its worker is restarted.
        png_labels: also write indexed PNG label maps.
        instances: split each thing class's mask into connected components, one COCO
            annotation each (stuff and background classes stay one mask per image).
        min_area: with ``instances``, the smallest component kept, in pixels.
        merge_limit: at the end of a run of at most this many images, merge the shards'
            COCO files into ``annotations.json`` (0: never; ``python -m jobs.merge`` does it
            on demand).
        address: Ray address (``auto`` joins a local cluster); ``None`` uses ``RAY_ADDRESS``,
            else starts an embedded Ray.
        device: ``auto`` (CUDA when the worker has a GPU), ``cpu`` or ``cuda``.
        sources: where each non-default setting came from (``checkpoint``, ``config file``,
            ``flag``), by dotted name (``inference.crop``); not part of the config's identity.
    """

    manifest: str
    vocabulary: str
    output: str
    model: str = DEFAULT_MODEL
    pretrained: str | None = "openai"
    method: MethodConfig = field(default_factory=MethodConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    background_first_line: bool = False
    threshold: float | None = None
    shard_size: int = 256
    num_workers: int | None = None
    model_cpus: float | None = None
    images_per_call: int = 8
    decode_threads: int = 4
    max_attempts: int = 3
    shard_timeout_s: float = 3600.0
    png_labels: bool = False
    instances: bool = False
    min_area: int = MIN_AREA
    merge_limit: int = 100_000
    address: str | None = None
    device: str = "auto"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        schemas.validate(self.to_json(), "run_config")

    def to_json(self) -> dict[str, Any]:
        """The config as ``schemas/run_config.schema.json`` describes it (``sources`` apart)."""
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("sources", *_NESTED)
        }
        return {**values, "method": to_json(self.method), "inference": to_json(self.inference)}

    @property
    def min_instance_area(self) -> int | None:
        """The smallest instance kept when splitting instances, else ``None``."""
        return self.min_area if self.instances else None


def load_run_config(
    file_values: Mapping[str, Any] | None, flag_values: Mapping[str, Any]
) -> RunConfig:
    """Defaults <- the checkpoint's shipped settings <- ``--config`` values <- flags.

    Args:
        file_values: the ``--config`` document (validated here), or ``None``.
        flag_values: settings from flags, shaped like the document; ``None`` means not given.
            ``method_options`` holds ``--method-options``.

    Raises:
        InputError: a setting is missing, unknown or invalid; the message names it.
    """
    try:
        if file_values:
            schemas.validate(file_values, "run_config")
        merged: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for source, layer in ((FILE, file_values or {}), (FLAG, flag_values)):
            for key, value in _flatten(layer, skip_none=source == FLAG).items():
                merged[key], sources[key] = value, source
        missing = [k for k in ("manifest", "vocabulary", "output") if k not in merged]
        if missing:
            raise InputError(
                f"Missing required setting(s): {', '.join('--' + m for m in missing)}."
            )
        shipped = shipped_settings(merged.get("model", DEFAULT_MODEL))
        method_name = merged.get("method.name", "gclip")
        # Shipped method options are GCLIP's (its global blocks for this depth); peers ignore them.
        recommended = {
            **{
                f"method.{k}": v
                for k, v in shipped.method_options.items()
                if method_name == "gclip"
            },
            **{f"inference.{k}": v for k, v in shipped.inference.items()},
        }
        for key, value in recommended.items():
            if key not in merged:
                merged[key], sources[key] = value, CHECKPOINT
        top: dict[str, Any] = {k: v for k, v in merged.items() if "." not in k}
        return RunConfig(
            **top,
            method=build(MethodConfig, _prefixed(merged, "method")),
            inference=build(InferenceConfig, _prefixed(merged, "inference")),
            sources=dict(sorted(sources.items())),
        )
    except InputError:
        raise
    except (ValueError, TypeError, OSError) as err:
        raise InputError(str(err)) from err


def labelling_fingerprint(
    config: RunConfig, method: MethodConfig, weights: str | None, vocabulary_fingerprint: str
) -> str:
    """sha256 over what changes labels, with the method as resolved on the model.

    Args:
        config: the run's config.
        method: the resolved method config (blocks fixed by depth or calibration).
        weights: the weights' sha256 (or random seed) when known; else the ``pretrained``
            string stands for them.
        vocabulary_fingerprint: :attr:`gclip.Vocabulary.fingerprint`.
    """
    inference = to_json(config.inference)
    for grouping in ("batch_size", "name_chunk"):  # results are equal for any value of these
        del inference[grouping]
    keyed = {
        "format_version": FORMAT_VERSION,
        "model": config.model,
        "weights": weights or config.pretrained,
        "method": to_json(method),
        "inference": inference,
        "vocabulary": vocabulary_fingerprint,
        "background_first_line": config.background_first_line,
        "threshold": config.threshold,
        "png_labels": config.png_labels,
        "min_instance_area": config.min_instance_area,
    }
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def _flatten(values: Mapping[str, Any], skip_none: bool) -> dict[str, Any]:
    """``{"method": {"name": ...}, "inference": {"crop": 64}}`` -> dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if value is None and skip_none:
            continue
        if key == "method" and isinstance(value, str):
            flat["method.name"] = value
        elif key in ("method", "method_options", "inference"):
            prefix = "inference" if key == "inference" else "method"
            flat.update({f"{prefix}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def _prefixed(merged: Mapping[str, Any], name: str) -> dict[str, Any]:
    return {k.removeprefix(f"{name}."): v for k, v in merged.items() if k.startswith(f"{name}.")}
