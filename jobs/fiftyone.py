"""Load a finished run into FiftyOne as a persistent dataset, to sort and filter it in the App.

    python -m jobs.fiftyone OUTPUT --name NAME [--overwrite] [--media-dir DIR] [--launch]

Needs the fiftyone extra: pip install -e '.[fiftyone]'. Images must be local for FiftyOne:
s3:// or http(s):// ones are downloaded into --media-dir, or refused without it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pipeline.errors import InputError
from pipeline.reading.fiftyone_dataset import FiftyOneUnavailableError, launch, load_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.fiftyone", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", help="a finished run's output folder (local or s3://)")
    parser.add_argument("--name", required=True, help="the FiftyOne dataset's name")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a dataset of that name, once loaded"
    )
    parser.add_argument(
        "--media-dir", help="download remote (s3://, http(s)://) images here; kept for reloads"
    )
    parser.add_argument(
        "--launch", action="store_true", help="open the dataset in the FiftyOne App afterwards"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = load_run(args.output, args.name, args.overwrite, args.media_dir)
    except FiftyOneUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except (InputError, OSError, ValueError, KeyError) as err:
        print(f"error: cannot load {args.output} into FiftyOne: {err}", file=sys.stderr)
        return 2
    print(
        f"{summary.samples} images of {summary.shards} shards loaded as FiftyOne dataset "
        f"{summary.name!r} ({summary.failures} failed in the run, not loaded); "
        f"open it with: fiftyone app launch {summary.name}"
    )
    if summary.similarity:
        print(f"similarity index {summary.similarity!r} over {summary.embeddings} embeddings")
    if args.launch:
        launch(summary.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
