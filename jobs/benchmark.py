"""Reproduce the papers' tables: score a method on a standard benchmark in its own layout.

    python -m jobs.benchmark --dataset voc21 --root data/VOCdevkit --output out/voc21 \
        [--model ViT-B-16-quickgelu --pretrained openai --method gclip] [--limit 50]

Lists the split, labels it through the labelling job (Ray; label maps in OUTPUT/labels/),
scores one confusion matrix over the split and writes OUTPUT/benchmark.json and .md, with
the published numbers beside ours. Scored as mmseg's IoUMetric scores (and ``jobs.evaluate``):
an image with ground truth but no prediction (one the job failed on) is missed, its pixels
counted as wrong. Exit code: 0 when scored; 1 if labelling failed or crashed; 2 for bad
input (dataset layout, settings).
"""

from __future__ import annotations

import logging
import sys
import traceback

from pipeline import InputError, RayBackend, SetupError
from pipeline.reproduction.cli import parse_args, spec
from pipeline.reproduction.runner import run_benchmark


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    benchmark = spec(args)
    try:
        result = run_benchmark(benchmark, RayBackend(args.address))
    except (InputError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except SetupError as err:
        print(f"error: the model could not be built: {err.cause}", file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        print(f"error: the benchmark crashed; see {benchmark.output}/run.json", file=sys.stderr)
        return 1
    print(result.markdown)
    print(f"scores: {benchmark.output}/benchmark.json and benchmark.md")
    return 0 if result.labelling.ok else 1


if __name__ == "__main__":
    sys.exit(main())
