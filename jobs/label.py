"""Label a Parquet manifest of images with open-vocabulary segmentation into COCO masks.

    python -m jobs.label --manifest M.parquet --vocabulary classes.txt --output OUT [--model demo]
    ray job submit --working-dir . -- python -m jobs.label ...   # on a cluster

Exit code: 0 when every shard finished (even with failed images); 1 if a shard failed, the
model or a worker could not be built, or the run crashed (with its traceback); 2 for bad
input, found before any work.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path

from pipeline import InputError, RayBackend, SetupError, execute, load_run_config, prepare_run
from pipeline.cli import overrides, parse_args
from pipeline.planning.report import describe_plan


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    try:
        text = Path(args.config).read_text(encoding="utf-8") if args.config else None
        config = load_run_config(json.loads(text) if text else None, overrides(args))
        run = prepare_run(config)
    except (InputError, OSError, ValueError) as err:  # nothing has started
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        c = config
        print(
            describe_plan(run.manifest, run.plan, run.done, c.output, c.png_labels, c.merge_limit)
        )
        return 0
    try:
        summary = execute(
            run, RayBackend(config.address), args.allow_config_change, args.retry_failed
        )
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SetupError as err:
        print(f"error: the model could not be built: {err.cause}", file=sys.stderr)
        print(f"(traceback: python -m jobs.status {config.output} --tracebacks)", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"error: the run crashed; {config.output}/run.json records it", file=sys.stderr)
        return 1
    masks = "annotations.json and " if summary.merged else ""
    print(
        f"{summary.images_labelled} images labelled, {summary.images_failed} failed, "
        f"{summary.shards_failed} of {summary.shards} shards failed, {summary.seconds:.1f} s. "
        f"Masks: {config.output}/{masks}annotations/*.parquet"
    )
    if summary.failures_by_error:
        kinds = ", ".join(f"{n} {error}" for error, n in summary.failures_by_error.items())
        where = "failures.jsonl" if summary.merged else "shards/*.json (or jobs.merge)"
        print(f"failed images by cause: {kinds}; each listed in {config.output}/{where}")
    if summary.retries:
        kinds = ", ".join(f"{n} {cause}" for cause, n in sorted(summary.retries.items()))
        print(f"attempts retried: {kinds} (died: worker lost; oom: out of memory; timeout)")
    if not summary.ok:
        print(
            f"failed shards and their tracebacks: python -m jobs.status {config.output} --tracebacks"
        )
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
