"""The run configuration: one frozen record of typed configs, built from layers, fingerprinted.

Settings come in layers, each over the one before: the library defaults (the dataclasses
themselves, their one home), what the model's checkpoint ships (``gclip.json`` beside its
weights), the ``--config`` file (JSON, ``schemas/run_config.schema.json``), then the flags.
:func:`load_run_config` builds the :class:`RunConfig` and records where every setting that is
not a default came from; ``OUTPUT/run.json`` keeps both. The settings fall in two records:
:class:`LabellingSettings` decide the labels and are fingerprinted as a whole;
:class:`ExecutionSettings` decide how the work runs and never change a label. Nothing here
imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import schemas
from gclip import InferenceConfig, MethodConfig
from gclip.config import ShippedSettings, build, to_json
from pipeline.errors import InputError
from pipeline.formats.images import MAX_PIXELS
from pipeline.formats.instances import MIN_AREA
from pipeline.formats.layout import FORMAT_VERSION

FILE, FLAG, CHECKPOINT = "config file", "flag", "checkpoint"
DEFAULT_MODEL = "ViT-B-16-quickgelu"  # the method's reference backbone, with OpenAI weights
_NESTED = ("method", "inference")
# Inference settings that group work without changing a label (tested): not fingerprinted.
RESULT_NEUTRAL = ("batch_size", "name_chunk")
ShippedLayer = Callable[[str], ShippedSettings]  # model -> what its checkpoint ships
EMBEDDING_DTYPES = ("float32", "float16")  # how embeddings/ stores the vectors


@dataclass(frozen=True, slots=True)
class LabellingSettings:
    """What decides the labels: fingerprinted as a whole (:func:`labelling_fingerprint`), so a
    resumed run mixes no shards made otherwise.

    Attributes:
        model: open_clip model name, ``demo``, ``local-dir:PATH|URI`` or ``hf-hub:...``;
            default the reference backbone of the method, ViT-B/16 with OpenAI weights.
        pretrained: open_clip tag, checkpoint path or URI (``s3://...``), or ``none``.
        method: the dense-feature method and its options.
        inference: how images become label maps.
        background_first_line: the vocabulary's first line is background (``cls_voc21.txt``).
        threshold: vocabulary-wide minimum probability (overrides the file's).
        png_labels: also write indexed PNG label maps.
        instances: split each thing class's mask into connected components, one COCO
            annotation each (stuff and background classes stay one mask per image).
        min_area: with ``instances``, the smallest component kept, in pixels.
        max_image_pixels: images with more pixels are recorded as failed without being
            decoded (Pillow's decompression-bomb limit by default; ``None`` or 0: no limit).
        embeddings: also write each labelled image's CLIP image embedding (open_clip's
            ``encode_image`` on its evaluation transform, L2-normalised) to ``embeddings/``.
        embedding_dtype: with ``embeddings``, ``float32`` or ``float16`` vectors.
    """

    model: str = DEFAULT_MODEL
    pretrained: str | None = "openai"
    method: MethodConfig = field(default_factory=MethodConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    background_first_line: bool = False
    threshold: float | None = None
    png_labels: bool = False
    instances: bool = False
    min_area: int = MIN_AREA
    max_image_pixels: int | None = MAX_PIXELS
    embeddings: bool = False
    embedding_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.max_image_pixels == 0:  # the flag's way to say "no limit"
            object.__setattr__(self, "max_image_pixels", None)
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(
                f"embedding_dtype {self.embedding_dtype!r} is not one of {EMBEDDING_DTYPES}."
            )

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**values, "method": to_json(self.method), "inference": to_json(self.inference)}

    @property
    def min_instance_area(self) -> int | None:
        """The smallest instance kept when splitting instances, else ``None``."""
        return self.min_area if self.instances else None

    @property
    def embedding_format(self) -> str | None:
        """The dtype of the embeddings written (``float32``, ``float16``), else ``None``."""
        return self.embedding_dtype if self.embeddings else None


@dataclass(frozen=True, slots=True)
class ExecutionSettings:
    """How the work is cut, spread and retried: no label depends on these.

    Attributes:
        shard_size: images per shard (a resumed run keeps its first plan's shards).
        num_workers: model actors, one GPU each where GPUs exist; ``None``: one per GPU of
            the cluster, else one.
        model_cpus: CPUs each model actor holds; ``None``: 1 beside a GPU (the host tasks,
            reading, decoding, encoding and writing, hold one each of the rest), else an even
            share of the CPUs (the host tasks, light beside a model on a CPU, run unreserved).
        images_per_call: images handed to the segmenter at once (their windows share batches).
        decode_threads: image-decoding threads per worker.
        max_attempts: tries per shard when its worker dies, runs out of memory or times out.
        shard_timeout_s: deadline of one shard attempt, after which its worker is restarted.
        stop_timeout_s: once the driver is told to stop (SIGTERM, SIGINT), how long the
            attempts in flight may take to finish before they are given back.
        merge_limit: at the end of a run of at most this many images, merge the shards'
            COCO files into ``annotations.json`` (0: never; ``python -m jobs.merge`` does it
            on demand).
        address: Ray address (``auto`` joins a local cluster); ``None`` uses ``RAY_ADDRESS``,
            else starts an embedded Ray.
        device: ``auto`` (CUDA when the worker has a GPU), ``cpu`` or ``cuda``.
    """

    shard_size: int = 256
    num_workers: int | None = None
    model_cpus: float | None = None
    images_per_call: int = 8
    decode_threads: int = 4
    max_attempts: int = 3
    shard_timeout_s: float = 3600.0
    stop_timeout_s: float = 60.0
    merge_limit: int = 100_000
    address: str | None = None
    device: str = "auto"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


LABELLING_KEYS = tuple(f.name for f in dataclasses.fields(LabellingSettings))
EXECUTION_KEYS = tuple(f.name for f in dataclasses.fields(ExecutionSettings))


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Everything a labelling run needs: where, what decides the labels, how it runs.

    Attributes:
        manifest: Parquet file, folder or glob (local path, ``file://`` or ``s3://``).
        vocabulary: vocabulary file (``.txt`` or ``.json``).
        output: output folder (local path or ``s3://``).
        labelling: what decides the labels (:class:`LabellingSettings`).
        execution: how the work runs (:class:`ExecutionSettings`).
        sources: where each non-default setting came from (``checkpoint``, ``config file``,
            ``flag``), by dotted name (``inference.crop``); not part of the config's identity.

    Its JSON (``--config`` files, ``run.json``'s ``config``) is one flat object:
    ``schemas/run_config.schema.json``.
    """

    manifest: str
    vocabulary: str
    output: str
    labelling: LabellingSettings = field(default_factory=LabellingSettings)
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        schemas.validate(self.to_json(), "run_config")

    @classmethod
    def from_settings(
        cls, manifest: str, vocabulary: str, output: str, **settings: Any
    ) -> RunConfig:
        """A config from flat, typed settings (``png_labels=True``, ``method=MethodConfig()``),
        each routed to the record that holds it; no layers, no sources (tests, scripts)."""
        unknown = set(settings) - set(LABELLING_KEYS) - set(EXECUTION_KEYS)
        if unknown:
            raise TypeError(f"unknown run settings: {', '.join(sorted(unknown))}")
        return cls(
            manifest,
            vocabulary,
            output,
            LabellingSettings(**{k: v for k, v in settings.items() if k in LABELLING_KEYS}),
            ExecutionSettings(**{k: v for k, v in settings.items() if k in EXECUTION_KEYS}),
        )

    def to_json(self) -> dict[str, Any]:
        """The config as ``schemas/run_config.schema.json`` describes it (``sources`` apart)."""
        where = {"manifest": self.manifest, "vocabulary": self.vocabulary, "output": self.output}
        return {**where, **self.labelling.to_json(), **self.execution.to_json()}


def load_run_config(
    file_values: Mapping[str, Any] | None,
    flag_values: Mapping[str, Any],
    shipped: ShippedLayer,
) -> RunConfig:
    """Defaults <- the checkpoint's shipped settings <- ``--config`` values <- flags.

    Args:
        file_values: the ``--config`` document (validated here), or ``None``.
        flag_values: settings from flags, shaped like the document; ``None`` means not given.
            ``method_options`` holds ``--method-options``.
        shipped: the checkpoint layer: what a model's checkpoint ships
            (:func:`pipeline.formats.checkpoints.shipped_settings`, which may read storage;
            :func:`no_checkpoint` for none).

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
        checkpoint = shipped(merged.get("model", DEFAULT_MODEL))
        recommended = {
            **{
                f"method.{k}": v
                for k, v in checkpoint.method_options_for(
                    merged.get("method.name", MethodConfig().name)
                ).items()
            },
            **{f"inference.{k}": v for k, v in checkpoint.inference.items()},
        }
        for key, value in recommended.items():
            if key not in merged:
                merged[key], sources[key] = value, CHECKPOINT
        top: dict[str, Any] = {k: v for k, v in merged.items() if "." not in k}
        labelling = LabellingSettings(
            **{k: v for k, v in top.items() if k in LABELLING_KEYS},
            method=build(MethodConfig, _prefixed(merged, "method")),
            inference=build(InferenceConfig, _prefixed(merged, "inference")),
        )
        execution = ExecutionSettings(**{k: v for k, v in top.items() if k in EXECUTION_KEYS})
        return RunConfig(
            manifest=top["manifest"],
            vocabulary=top["vocabulary"],
            output=top["output"],
            labelling=labelling,
            execution=execution,
            sources=dict(sorted(sources.items())),
        )
    except InputError:
        raise
    except (ValueError, TypeError, OSError) as err:
        raise InputError(str(err)) from err


def no_checkpoint(model: str) -> ShippedSettings:
    """A checkpoint layer that ships nothing (the defaults stand)."""
    return ShippedSettings()


def labelling_fingerprint(
    labelling: LabellingSettings,
    method: MethodConfig,
    weights: str | None,
    vocabulary_fingerprint: str,
) -> str:
    """sha256 over every labelling setting, with the method as resolved on the model.

    Args:
        labelling: the run's labelling settings, all of them but :data:`RESULT_NEUTRAL`.
        method: the resolved method config (blocks fixed by depth or calibration).
        weights: the weights' sha256 (or random seed) when known; else the ``pretrained``
            string stands for them.
        vocabulary_fingerprint: :attr:`gclip.Vocabulary.fingerprint`.
    """
    keyed = labelling.to_json()
    for name in RESULT_NEUTRAL:
        del keyed["inference"][name]
    keyed.update(
        format_version=FORMAT_VERSION,
        method=to_json(method),
        weights=weights or labelling.pretrained,
        vocabulary=vocabulary_fingerprint,
    )
    return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()


def settings_changed(previous: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The labelling settings that differ between two configs' JSON, as ``name: old -> new``
    lines (dotted names for method and inference options; absent keys shown as such)."""
    old, new = _flatten_labelling(previous), _flatten_labelling(current)
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key.removeprefix("inference.") in RESULT_NEUTRAL:
            continue
        before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if before != after:
            lines.append(f"{key}: {_shown(before)} -> {_shown(after)}")
    return lines


_ABSENT = object()


def _shown(value: Any) -> str:
    return "(not set)" if value is _ABSENT else json.dumps(value)


def _flatten_labelling(config: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key in LABELLING_KEYS:
        value = config.get(key, _ABSENT)
        if key in _NESTED and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        elif value is not _ABSENT:
            flat[key] = value
    return flat


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
