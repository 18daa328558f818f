"""The benchmark job's command line: flags -> a :class:`BenchmarkSpec` (``jobs.benchmark``
stays thin). Settings flags are the labelling job's, and override the preset."""

from __future__ import annotations

import argparse
from typing import Any

from gclip import METHODS
from pipeline.cli import add_inference_flags, inference_overrides
from pipeline.reproduction.presets import DATASETS, PROTOCOLS, default_protocol
from pipeline.reproduction.runner import BenchmarkSpec

_RUN_FLAGS = ("model", "pretrained", "threshold", "num_workers", "shard_size", "device", "address")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m jobs.benchmark",
        description="Score a method on a standard benchmark, beside the papers' numbers.",
    )
    p.add_argument("--dataset", required=True, choices=DATASETS)
    p.add_argument(
        "--root", required=True, help="the folder the dataset unpacks to, or its mmseg data root"
    )
    p.add_argument("--output", required=True, help="run, label maps and benchmark.json")
    p.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        help="whose evaluation configs (default: the method's own repo; clearclip otherwise)",
    )
    p.add_argument("--limit", type=int, help="only the split's first N images (a quick look)")
    p.add_argument("--method", choices=METHODS, default="gclip")
    p.add_argument("--model", help="as jobs.label (default ViT-B-16-quickgelu)")
    p.add_argument("--pretrained", help="as jobs.label (default openai)")
    p.add_argument("--threshold", type=float, help="prob_thd over the preset's")
    add_inference_flags(p)  # the labelling job's; --pamr is off in every preset
    p.add_argument("--num-workers", type=int)
    p.add_argument("--shard-size", type=int)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--address", help="Ray address, as jobs.label")
    args = p.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        p.error("--limit must be at least 1")
    return args


def spec(args: argparse.Namespace) -> BenchmarkSpec:
    """The benchmark the flags ask for; unset flags leave the preset's values."""
    overrides: dict[str, Any] = {k: getattr(args, k) for k in _RUN_FLAGS}
    overrides["method"] = args.method
    overrides["inference"] = inference_overrides(args)
    protocol = args.protocol or default_protocol(args.method)
    return BenchmarkSpec(args.dataset, args.root, args.output, protocol, args.limit, overrides)
