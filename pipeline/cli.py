"""The labelling job's command line: flags -> config overrides (``jobs.label`` stays thin)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gclip import METHODS

_INFERENCE_FLAGS = ("batch_size", "short_side", "crop", "stride", "precision", "pamr")
_RUN_FLAGS = (
    "manifest",
    "vocabulary",
    "output",
    "model",
    "pretrained",
    "method",
    "method_options",
    "num_workers",
    "shard_size",
    "threshold",
    "background_first_line",
    "png_labels",
    "address",
)


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
        "--model", help="open_clip model name, 'demo', local-dir:PATH or hf-hub:ORG/REPO"
    )
    p.add_argument(
        "--pretrained", help="open_clip tag, checkpoint path, or 'none' for random weights"
    )
    p.add_argument("--method", choices=METHODS)
    p.add_argument(
        "--method-options", type=json.loads, help="JSON, e.g. '{\"global_blocks\": [6, 7]}'"
    )
    p.add_argument("--num-workers", type=int)
    p.add_argument("--shard-size", type=int)
    p.add_argument("--batch-size", type=int, help="windows per forward pass")
    p.add_argument("--short-side", type=int)
    p.add_argument("--crop", type=int)
    p.add_argument("--stride", type=int)
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--pamr", action="store_true", default=None)
    p.add_argument(
        "--threshold", type=float, help="minimum class probability, else unlabelled (255)"
    )
    p.add_argument("--background-first-line", action="store_true", default=None)
    p.add_argument(
        "--png-labels", action="store_true", default=None, help="also write indexed PNG label maps"
    )
    p.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, else embedded local Ray)"
    )
    p.add_argument(
        "--allow-config-change",
        action="store_true",
        help="resume an output made with other settings",
    )
    return p.parse_args(argv)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Flags given on the command line, shaped like :class:`pipeline.RunConfig` fields."""
    values: dict[str, Any] = {k: getattr(args, k) for k in _RUN_FLAGS}
    inference = {k: getattr(args, k) for k in _INFERENCE_FLAGS if getattr(args, k) is not None}
    values["inference"] = inference or None
    return values
