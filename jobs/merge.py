"""Merge a run's shards into one COCO file: ``python -m jobs.merge OUTPUT``.

Writes ``OUTPUT/annotations.json`` (and ``OUTPUT/failures.jsonl``) from the finished shards'
files, streaming one shard at a time: memory stays bounded, however large the run. Runs of at
most ``--merge-limit`` images (default 100,000) are merged when they end anyway. For a
labelling tool that names images by their relative path (CVAT), ``--file-names image_id
--name cvat.json`` writes a second file whose ``file_name`` is each image's id.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.formats.layout import ANNOTATIONS, FAILURES
from pipeline.formats.outputs import FILE_NAMES, finished_shards, merge
from pipeline.formats.storage import Storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.merge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument(
        "--name", default=ANNOTATIONS, help="the COCO file, relative to OUTPUT (%(default)s)"
    )
    parser.add_argument(
        "--file-names",
        choices=FILE_NAMES,
        default="uri",
        help="images' file_name: the uri read (default), or the image id (a path relative to "
        "the image folder when the manifest came from jobs.manifest)",
    )
    args = parser.parse_args(argv)
    storage = Storage(args.output, create=False)
    shards = finished_shards(storage)
    if not shards:
        print(f"error: {args.output} holds no finished shard to merge", file=sys.stderr)
        return 2
    counts = merge(storage, shards, name=args.name, file_names=args.file_names)
    print(
        f"{counts['images']} images, {counts['annotations']} annotations from {len(shards)} "
        f"shards: {storage.uri(args.name)} and {FAILURES}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
