"""Label a Parquet manifest of images with open-vocabulary segmentation into COCO masks.

    python -m jobs.label --manifest M.parquet --vocabulary classes.txt --output OUT [--model demo]
    ray job submit --working-dir . -- python -m jobs.label ...   # on a cluster

Exit code: 0 when every shard finished (even with some failed images); 1 if a shard failed,
every image failed, the model or a worker could not be built, or the run crashed (with its
traceback); 2 for bad input, found before any work; 130 (SIGINT) or 143 (SIGTERM) when
stopped: the run is resumable with the same command.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pipeline import (
    Backend,
    InputError,
    RayBackend,
    execute,
    load_run_config,
    prepare_run,
)
from pipeline.cli import build_parser, overrides, parse_args
from pipeline.formats.checkpoints import shipped_settings
from pipeline.planning.dry_run import describe_plan
from pipeline.running.stop import StopRequest, stop_on_signals
from pipeline.running.summary import describe_summary, ending


def main(argv: list[str] | None = None, backend: Backend | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    argv = sys.argv[1:] if argv is None else argv
    if not argv:  # a bare command: show what it takes
        build_parser().print_help()
        print(
            "\nerror: give --config FILE, or --manifest, --vocabulary and --output", file=sys.stderr
        )
        return 2
    args = parse_args(argv)
    try:
        text = Path(args.config).read_text(encoding="utf-8") if args.config else None
        config = load_run_config(
            json.loads(text) if text else None, overrides(args), shipped_settings
        )
        run = prepare_run(config, args.allow_config_change)
    except (InputError, OSError, ValueError) as err:  # nothing has started
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        c = config
        layout = (c.output, c.labelling.png_labels, c.execution.merge_limit)
        print(describe_plan(run.manifest, run.plan, run.done, *layout))
        print(f"model {c.labelling.model}, weights {run.weights}: found, they can be had")
        return 0
    try:
        stop = StopRequest()  # the first SIGTERM or SIGINT winds the run down, resumable
        with stop_on_signals(stop):
            summary = execute(
                run,
                backend or RayBackend(config.execution.address),
                args.allow_config_change,
                args.retry_failed,
                stop,
            )
    except BaseException as err:  # the job's end, whatever it is: a code and its reason
        code, message = ending(err, config.output)
        print(message, file=sys.stderr)
        return code
    print(describe_summary(summary, config.output))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
