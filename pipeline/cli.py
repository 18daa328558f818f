"""The labelling job's command line: flags -> config layers (``jobs.label`` stays thin).

Every flag that sets a config value is named after its :class:`pipeline.RunConfig` key
(``--short-side`` sets ``inference.short_side``); a test keeps flags, dataclasses and
``schemas/run_config.schema.json`` in step. Boolean flags have ``--no-...`` forms, so a flag
can switch off a ``true`` from ``--config``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from gclip import METHODS
from gclip.config import PRECISIONS

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
    "threshold",
    "background_first_line",
    "png_labels",
    "instances",
    "min_area",
    "merge_limit",
    "address",
    "device",
)
# Flags that set InferenceConfig fields.
INFERENCE_FLAGS = (
    "batch_size",
    "short_side",
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.label",
        description="Label a Parquet manifest of images into COCO masks.",
    )
    p.add_argument(
        "--config", help="JSON run config (schemas/run_config.schema.json); flags override it"
    )
    p.add_argument("--manifest", help="Parquet file, folder or glob; local, file:// or s3://")
    p.add_argument("--vocabulary", help="class list (.txt, one class per line) or .json")
    p.add_argument("--output", help="output folder (local or s3://)")
    p.add_argument(
        "--model", help="open_clip model name, 'demo', local-dir:PATH|URI or hf-hub:ORG/REPO"
    )
    p.add_argument(
        "--pretrained",
        help="open_clip tag, checkpoint path or URI (s3://...), or 'none' for random weights",
    )
    p.add_argument("--method", choices=METHODS)
    p.add_argument(
        "--method-options", type=json.loads, help="JSON, e.g. '{\"global_blocks\": [6, 7]}'"
    )
    p.add_argument("--num-workers", type=int, help="model actors (default: one per GPU, or one)")
    p.add_argument(
        "--model-cpus",
        type=float,
        help="CPUs each model actor holds (default: 1 beside a GPU, host tasks taking the rest; "
        "on CPU clusters an even share of the CPUs)",
    )
    p.add_argument("--shard-size", type=int)
    p.add_argument("--images-per-call", type=int, help="images whose windows share batches")
    p.add_argument("--decode-threads", type=int, help="image-decoding threads per worker")
    p.add_argument("--max-attempts", type=int, help="tries per shard (dead worker, OOM, timeout)")
    p.add_argument(
        "--shard-timeout",
        dest="shard_timeout_s",
        type=float,
        help="seconds one shard attempt may take before its worker is restarted",
    )
    add_inference_flags(p)
    p.add_argument(
        "--threshold", type=float, help="minimum class probability, else unlabelled (255)"
    )
    p.add_argument("--background-first-line", action=_BOOL)
    p.add_argument("--png-labels", action=_BOOL, help="also write indexed PNG label maps")
    p.add_argument(
        "--instances",
        action=_BOOL,
        help="one COCO annotation per connected component of each thing class (stuff classes, "
        "JSON vocabulary 'isthing': false, and background stay one mask per image)",
    )
    p.add_argument(
        "--min-area", type=int, help="with --instances, the smallest instance kept, in pixels"
    )
    p.add_argument(
        "--merge-limit",
        type=int,
        help="merge annotations.json at the end of runs of at most this many images "
        "(default 100000; 0: never; `python -m jobs.merge OUTPUT` merges on demand)",
    )
    p.add_argument(
        "--address",
        help="Ray cluster address; 'auto' joins a local cluster (default: RAY_ADDRESS, else "
        "an embedded Ray started for this job)",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume an output made with other settings",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate and plan, print what a run would do, and exit (no Ray, no model)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="relabel the images an earlier run recorded as failed",
    )
    return p.parse_args(argv)


def add_inference_flags(p: argparse.ArgumentParser) -> None:
    """The flags of :data:`INFERENCE_FLAGS` (shared with ``jobs.benchmark``)."""
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--short-side", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--stride", type=int)
    p.add_argument("--logit-scale", type=float)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--pamr", action=_BOOL, help="refine logits with PAMR")
    p.add_argument("--pamr-iterations", type=int)
    p.add_argument("--pamr-dilations", type=int, nargs="+")
    p.add_argument(
        "--name-chunk", type=int, help="names held at once (memory for large vocabularies)"
    )


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
