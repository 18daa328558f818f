"""Merge a run's shards into one COCO file: ``python -m jobs.merge OUTPUT``.

Writes ``OUTPUT/annotations.json`` (and ``OUTPUT/failures.jsonl``) from the finished shards'
files, streaming one shard at a time: memory stays bounded, however large the run. Runs of at
most ``--merge-limit`` images (default 100,000) are merged when they end anyway.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.formats.layout import ANNOTATIONS, FAILURES
from pipeline.formats.outputs import finished_shards, merge
from pipeline.formats.storage import Storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.merge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    args = parser.parse_args(argv)
    storage = Storage(args.output, create=False)
    shards = finished_shards(storage)
    if not shards:
        print(f"error: {args.output} holds no finished shard to merge", file=sys.stderr)
        return 2
    counts = merge(storage, shards)
    print(
        f"{counts['images']} images, {counts['annotations']} annotations from {len(shards)} "
        f"shards: {storage.uri(ANNOTATIONS)} and {FAILURES}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
