"""Score a run against ground truth: per-class IoU, mIoU, pixel accuracy, confusion matrix.

    python -m jobs.evaluate --predictions OUTPUT --ground-truth GT [--values indices|ids]

GT is a COCO file (``.json``) or a folder of PNG label maps named ``<image_id>.png``; every
image in it is scored, as mmseg's IoUMetric scores (and ``jobs.benchmark``): an image with
ground truth but no prediction is missed, its pixels counted as wrong. Predictions without
ground truth are named, not scored. Writes ``OUTPUT/evaluation.json``
(schemas/evaluation.schema.json) and ``OUTPUT/evaluation.md`` (beside a COCO file given as
OUTPUT). Exit code: 0 when scored, 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.formats.layout import EVALUATION, EVALUATION_TABLE
from pipeline.formats.storage import Storage
from pipeline.reading.evaluation import evaluate, write_evaluation
from pipeline.reading.predictions import folder_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.evaluate", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--predictions", required=True, help="a finished run's output folder, or a COCO .json"
    )
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
    storage = Storage(folder_of(args.predictions))
    write_evaluation(storage, result)
    print(result.markdown())
    print(f"written to {storage.uri(EVALUATION)} and {EVALUATION_TABLE}")
    if result.missed:
        print(
            f"warning: {len(result.missed)} ground-truth images have no prediction, scored as "
            "wholly wrong (a failed image, or ground truth beyond the run)",
            file=sys.stderr,
        )
    if result.without_truth:
        print(
            f"warning: {len(result.without_truth)} predicted images have no ground truth",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
