"""Label a Parquet manifest of images with open-vocabulary segmentation into COCO masks.

    python -m jobs.label --manifest M.parquet --vocabulary classes.txt --output OUT [--model demo]
    ray job submit --working-dir . -- python -m jobs.label ...   # on a cluster

Exit code: 0 when every shard finished (even with failed images), 1 if a shard failed,
2 for invalid input.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pipeline import (
    ConfigChangedError,
    ManifestError,
    load_run_config,
    ray_executor_factory,
    run_labelling,
)
from pipeline.cli import overrides, parse_args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    try:
        file_values = (
            json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else None
        )
        config = load_run_config(file_values, overrides(args))
        summary = run_labelling(config, ray_executor_factory, args.allow_config_change)
    except (ValueError, ManifestError, ConfigChangedError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{summary.images_labelled} images labelled, {summary.images_failed} failed, "
        f"{summary.shards_failed} of {summary.shards} shards failed, {summary.seconds:.1f} s. "
        f"Masks: {config.output}/annotations.json"
    )
    if summary.failures_by_error:
        kinds = ", ".join(f"{n} {error}" for error, n in summary.failures_by_error.items())
        print(f"failed images by cause: {kinds}; each listed in {config.output}/failures.jsonl")
    if not summary.ok:
        print(
            f"failed shards and their tracebacks: python -m jobs.status {config.output} --tracebacks"
        )
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
