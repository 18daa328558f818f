"""Write one self-contained HTML report of a run: ``python -m jobs.report OUTPUT``.

``OUTPUT/report.html`` holds the run's counts and settings, failures by cause, figures per
class and a review queue of the lowest-confidence images with their overlays; it needs no
network to view. Works on a finished run or one still running, on local disk or s3://.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import InputError
from pipeline.reading.report_html import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument(
        "--review", type=int, default=24, help="images in the review queue (default 24)"
    )
    args = parser.parse_args(argv)
    if args.review < 0:
        parser.error("--review must be 0 or more")
    try:
        path = write_report(args.output, review=args.review)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"report written: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
