"""Score a run against ground truth: per-class IoU, mIoU, pixel accuracy, confusion matrix.

    python -m jobs.evaluate --predictions OUTPUT --ground-truth GT [--values indices|ids]

GT is a COCO file (``.json``) or a folder of PNG label maps named ``<image_id>.png``. Writes
``OUTPUT/evaluation.json`` (schemas/evaluation.schema.json) and ``OUTPUT/evaluation.md``.
"""

from __future__ import annotations

import argparse
import json
import sys

import schemas
from pipeline.formats.layout import EVALUATION, EVALUATION_TABLE
from pipeline.formats.storage import Storage
from pipeline.reading.evaluation import evaluate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--predictions", required=True, help="a finished run's output folder")
    parser.add_argument(
        "--ground-truth", required=True, help="COCO .json or folder of PNG label maps"
    )
    parser.add_argument(
        "--values",
        choices=("indices", "ids"),
        default="indices",
        help="PNG pixel values are vocabulary indices (default) or category ids",
    )
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.predictions, args.ground_truth, args.values)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = result.to_json()
    schemas.validate(report, "evaluation")
    storage = Storage(args.predictions)
    storage.write_atomic(EVALUATION, json.dumps(report, indent=1).encode())
    storage.write_atomic(EVALUATION_TABLE, (result.table() + "\n").encode())
    print(result.table())
    print(
        f"\n{result.images} images scored; written to {storage.uri(EVALUATION)} and {EVALUATION_TABLE}"
    )
    if result.missing:
        print(
            f"warning: {len(result.missing)} predicted images had no ground truth", file=sys.stderr
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
