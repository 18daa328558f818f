"""Find near-duplicate images of a labelled run: ``python -m jobs.dedup OUTPUT``.

Groups images whose embeddings (a run labelled with ``--embeddings``) have a cosine
similarity above ``--threshold``, writes ``OUTPUT/duplicates.parquet`` (``group``,
``image_id``, ``similarity`` to the group's first member) and, with ``--write-manifest``, a
manifest of the run's rows less every duplicate but the first of each group, for jobs.label.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.curation import (
    DEFAULT_THRESHOLD,
    DedupSettings,
    find_duplicates,
    write_duplicates,
    write_keep_manifest,
)
from pipeline.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.dedup", description=__doc__.split("\n")[0]
    )
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument(
        "--threshold", type=float, default=DEFAULT_THRESHOLD,
        help=f"cosine similarity above which images are duplicates (default {DEFAULT_THRESHOLD}, "
        "for real CLIP models)",
    )  # fmt: skip
    parser.add_argument(
        "--index", choices=("auto", "flat", "ivf"), default="auto",
        help="flat: exact (all vectors in memory); ivf: approximate faiss IVF, fp16 codes; "
        "auto: flat up to 100k embeddings (default)",
    )  # fmt: skip
    parser.add_argument(
        "--write-manifest", metavar="KEEP.parquet", help="write a keep-one manifest"
    )
    args = parser.parse_args(argv)
    try:
        settings = DedupSettings(threshold=args.threshold, index=args.index)
    except ValueError as err:
        parser.error(str(err))
    try:
        duplicates = find_duplicates(args.output, settings)
        path = write_duplicates(args.output, duplicates)
        kept = None
        if args.write_manifest:
            kept = write_keep_manifest(args.output, duplicates.dropped(), args.write_manifest)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"{duplicates.images:,} images compared ({duplicates.index} index): "
        f"{duplicates.groups:,} groups, {duplicates.table.num_rows:,} images in them; {path}"
    )
    if kept is not None:
        print(f"keep-one manifest: {kept:,} rows written to {args.write_manifest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
