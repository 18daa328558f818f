"""Merge a run's shards into one COCO file: ``python -m jobs.merge OUTPUT``.

Writes ``OUTPUT/annotations.json`` (and ``OUTPUT/failures.jsonl``) from the finished shards'
files, streaming one shard at a time: memory stays bounded, however large the run. Runs of at
most ``--merge-limit`` images (default 100,000) are merged when they end anyway. For a
labelling tool that names images by their relative path (CVAT), ``--file-names image_id
--name cvat.json`` writes a second file whose ``file_name`` is each image's id.
"""

from __future__ import annotations

import argparse
import re
import sys

from pipeline.errors import InputError
from pipeline.formats import layout
from pipeline.formats.layout import ANNOTATIONS, FAILURES
from pipeline.formats.outputs import FILE_NAMES, merge
from pipeline.formats.progress import read_progress
from pipeline.formats.storage import Storage

# The run's own files and folders: a merged file named like one would overwrite the run.
RESERVED: tuple[str, ...] = (layout.RUN, FAILURES, layout.SHARDS, layout.LEDGER, layout.LABELS)
RESERVED += (layout.COCO_SHARDS, layout.ANNOTATION_TABLES, layout.SUMMARY_TABLES)


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
    problem = name_problem(args.name)
    if problem:
        print(
            f"error: --name {args.name!r} {problem}; give a file name or a relative path inside "
            f"{args.output}, such as cvat.json or exports/cvat.json",
            file=sys.stderr,
        )
        return 2
    storage = Storage(args.output, create=False)
    try:
        shards = read_progress(storage).done_shards
        if not shards:
            raise InputError(f"{args.output} holds no finished shard to merge")
        counts = merge(storage, shards, name=args.name, file_names=args.file_names)
    except InputError as err:  # a damaged shard file among them, named with the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{counts['images']} images, {counts['annotations']} annotations from {len(shards)} "
        f"shards: {storage.uri(args.name)} and {FAILURES}"
    )
    return 0


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be the merged file's path inside OUTPUT, or None when it can."""
    parts = re.split(r"[/\\]", name)
    if not name.strip():
        return "is empty"
    if name[0] in "/\\" or re.match(r"[A-Za-z]:[/\\]|[A-Za-z][A-Za-z0-9+.-]*://", name):
        return "is absolute: it would be written outside the output folder"
    if ".." in parts or "" in parts:
        return "has a '..' or an empty part: it would land outside the output folder, or nowhere"
    if parts[0] in RESERVED:
        return "is one of the run's own files or folders"
    return None


if __name__ == "__main__":
    sys.exit(main())
