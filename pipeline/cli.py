"""The labelling job's command line: flags -> config layers, and what the job prints.

Every flag that sets a config value is named after its :class:`pipeline.RunConfig` key
(``--short-side`` sets ``inference.short_side``); a test keeps flags, dataclasses and
``schemas/run_config.schema.json`` in step. Boolean flags have ``--no-...`` forms, so a flag
can switch off a ``true`` from ``--config``. Each flag's help shows its default, read from
the dataclass that holds it (their one home).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from gclip import METHODS, InferenceConfig
from gclip.config import DEVICES, PRECISIONS
from pipeline.config import EMBEDDING_DTYPES, ExecutionSettings, LabellingSettings

# Flags that set RunConfig fields, by argparse destination.
RUN_FLAGS = (
    "manifest",
    "vocabulary",
    "output",
    "model",
    "pretrained",
    "method_options",
    "num_workers",
    "model_cpus",
    "shard_size",
    "images_per_call",
    "decode_threads",
    "max_attempts",
    "shard_timeout_s",
    "stop_timeout_s",
    "threshold",
    "background_first_line",
    "png_labels",
    "instances",
    "min_area",
    "max_image_pixels",
    "embeddings",
    "embedding_dtype",
    "merge_limit",
    "address",
    "device",
)
# Flags that set InferenceConfig fields.
INFERENCE_FLAGS = (
    "batch_size",
    "short_side",
    "max_long_side",
    "crop",
    "stride",
    "logit_scale",
    "precision",
    "pamr",
    "pamr_iterations",
    "pamr_dilations",
    "name_chunk",
)
_BOOL = argparse.BooleanOptionalAction


def _defaults(*classes: type[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                values[f.name] = f.default
    return values


_DEFAULTS = _defaults(LabellingSettings, ExecutionSettings)
_INFERENCE_DEFAULTS = _defaults(InferenceConfig)


def _help(text: str, name: str, defaults: dict[str, Any] | None = None) -> str:
    value = (defaults or _DEFAULTS).get(name)
    shown = (
        "none"
        if value is None
        else " ".join(map(str, value))
        if isinstance(value, tuple)
        else value
    )
    return f"{text} (default: {shown})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser() -> argparse.ArgumentParser:
    """The labelling job's flags."""
    p = argparse.ArgumentParser(
        prog="python -m jobs.label",
        description="Label a Parquet manifest of images into COCO masks (and PNG label maps).",
        epilog="Make a manifest from a folder of images with `python -m jobs.manifest FOLDER "
        "--output M.parquet`. Settings a flag leaves unset come from --config, then the "
        "model's checkpoint, then the defaults shown.",
    )
    where = p.add_argument_group("input and output")
    where.add_argument(
        "--config", help="JSON run config (schemas/run_config.schema.json); flags override it"
    )
    where.add_argument(
        "--manifest",
        help="Parquet manifest: a file, folder or glob; local, file:// or s3:// (from "
        "`python -m jobs.manifest`)",
    )
    where.add_argument("--vocabulary", help="class list (.txt, one class per line) or .json")
    where.add_argument("--output", help="output folder (local or s3://); created if missing")
    model = p.add_argument_group("model and method (these decide the labels)")
    model.add_argument(
        "--model",
        help=_help("open_clip model name, 'demo', local-dir:PATH|URI or hf-hub:ORG/REPO", "model"),
    )
    model.add_argument(
        "--pretrained",
        help=_help(
            "open_clip tag, checkpoint path or URI (s3://...), or 'none' for random weights",
            "pretrained",
        ),
    )
    model.add_argument("--method", choices=METHODS, help="dense-feature method (default: gclip)")
    model.add_argument(
        "--method-options",
        type=json.loads,
        help="the method's options as JSON, e.g. '{\"global_blocks\": [6, 7]}' "
        "(docs/gclip-method.md lists them)",
    )
    add_inference_flags(p)
    labels = p.add_argument_group("labels")
    labels.add_argument(
        "--threshold",
        type=float,
        help=_help("minimum class probability, else unlabelled (255)", "threshold"),
    )
    labels.add_argument(
        "--background-first-line",
        action=_BOOL,
        help=_help("the vocabulary's first line is the background class", "background_first_line"),
    )
    labels.add_argument(
        "--png-labels", action=_BOOL, help=_help("also write indexed PNG label maps", "png_labels")
    )
    labels.add_argument(
        "--instances",
        action=_BOOL,
        help=_help(
            "one COCO annotation per connected component of each thing class (stuff classes, "
            "JSON vocabulary 'isthing': false, and background stay one mask per image)",
            "instances",
        ),
    )
    labels.add_argument(
        "--min-area",
        type=int,
        help=_help("with --instances, the smallest instance kept, in pixels", "min_area"),
    )
    labels.add_argument(
        "--max-image-pixels",
        type=_pixels,
        help=_help(
            "images with more pixels are recorded as failed without being decoded (a guard "
            "against decompression bombs; 0: no limit)",
            "max_image_pixels",
        ),
    )
    labels.add_argument(
        "--embeddings",
        action=_BOOL,
        help=_help(
            "also write each labelled image's CLIP image embedding (open_clip's encode_image "
            "on the model's eval transform, L2-normalised) to OUTPUT/embeddings/, for "
            "similarity search and FiftyOne; one more forward at the model's resolution per image",
            "embeddings",
        ),
    )
    labels.add_argument(
        "--embedding-dtype",
        choices=EMBEDDING_DTYPES,
        help=_help("with --embeddings, the vectors' float type", "embedding_dtype"),
    )
    run = p.add_argument_group("execution (never changes a label)")
    run.add_argument(
        "--shard-size",
        type=int,
        help=_help("images per shard (a resumed run keeps its plan)", "shard_size"),
    )
    run.add_argument(
        "--num-workers", type=int, help="model actors (default: one per GPU of the cluster, or one)"
    )
    run.add_argument(
        "--model-cpus",
        type=float,
        help="CPUs each model actor holds (default: 1 beside a GPU, host tasks taking the rest; "
        "on CPU clusters an even share of the CPUs)",
    )
    run.add_argument(
        "--images-per-call",
        type=int,
        help=_help("images whose windows share batches", "images_per_call"),
    )
    run.add_argument(
        "--decode-threads",
        type=int,
        help=_help("image-decoding threads per worker", "decode_threads"),
    )
    run.add_argument(
        "--max-attempts",
        type=int,
        help=_help("tries per shard (dead worker, out of memory, timeout)", "max_attempts"),
    )
    run.add_argument(
        "--shard-timeout",
        dest="shard_timeout_s",
        type=float,
        help=_help(
            "seconds one shard attempt may take before its worker is restarted", "shard_timeout_s"
        ),
    )
    run.add_argument(
        "--stop-timeout",
        dest="stop_timeout_s",
        type=float,
        help=_help(
            "once told to stop (SIGTERM, SIGINT, ray job stop), seconds the attempts in flight "
            "may take to finish; a second signal stops at once",
            "stop_timeout_s",
        ),
    )
    run.add_argument(
        "--merge-limit",
        type=int,
        help=_help(
            "merge annotations.json at the end of runs of at most this many images (0: never; "
            "`python -m jobs.merge OUTPUT` merges on demand)",
            "merge_limit",
        ),
    )
    run.add_argument(
        "--address",
        help="Ray cluster address; 'auto' joins a local cluster (default: RAY_ADDRESS, else "
        "an embedded Ray started for this job)",
    )
    run.add_argument(
        "--device",
        choices=DEVICES,
        help=_help("where the model runs; auto: CUDA where a worker has a GPU", "device"),
    )
    act = p.add_argument_group("what to do")
    act.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume an output made with other settings",
    )
    act.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and plan, print what a run would do, and exit (no Ray, no model)",
    )
    act.add_argument(
        "--retry-failed",
        action="store_true",
        help="relabel the images an earlier run recorded as failed",
    )
    return p


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    """The flags of :data:`INFERENCE_FLAGS` (shared with ``jobs.benchmark``)."""
    g = p.add_argument_group("inference (how images become label maps)")
    d = _INFERENCE_DEFAULTS
    g.add_argument(
        "--batch-size", type=int, help=_help("windows per forward pass", "batch_size", d)
    )
    g.add_argument(
        "--short-side",
        type=int,
        help=_help("resize so the shorter side has this many pixels", "short_side", d),
    )
    g.add_argument(
        "--max-long-side",
        type=int,
        help=_help("the resized longer side never exceeds this (thin strips)", "max_long_side", d),
    )
    g.add_argument(
        "--crop", type=int, help=_help("sliding-window side, in resized pixels", "crop", d)
    )
    g.add_argument("--stride", type=int, help=_help("step between windows", "stride", d))
    g.add_argument(
        "--logit-scale",
        type=float,
        help=_help("temperature of the softmax over class names", "logit_scale", d),
    )
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        help=_help("auto: bf16 autocast on CUDA, fp32 elsewhere", "precision", d),
    )
    g.add_argument("--pamr", action=_BOOL, help=_help("refine logits with PAMR", "pamr", d))
    g.add_argument(
        "--pamr-iterations", type=int, help=_help("PAMR iterations", "pamr_iterations", d)
    )
    g.add_argument(
        "--pamr-dilations",
        type=int,
        nargs="+",
        help=_help("PAMR neighbourhood dilations, in resized pixels", "pamr_dilations", d),
    )
    g.add_argument(
        "--name-chunk",
        type=int,
        help=_help("class names held at once (memory for large vocabularies)", "name_chunk", d),
    )


def _pixels(text: str) -> int:
    """``120e6`` or ``120000000`` (0: no limit)."""
    return int(float(text))


def inference_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The inference flags given, shaped like the ``--config`` document's ``inference``."""
    return {k: getattr(args, k) for k in INFERENCE_FLAGS if getattr(args, k) is not None}


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line, shaped like the ``--config`` document (``None``: not
    given)."""
    values: dict[str, Any] = {k: getattr(args, k) for k in RUN_FLAGS}
    values["method"] = args.method
    values["inference"] = inference_overrides(args)
    return values
