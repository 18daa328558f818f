"""Make the Parquet manifest that jobs.label reads, from folders, patterns, buckets, COCO or lists.

    python -m jobs.manifest data/images --output manifest.parquet [--probe] [--sha256]
    python -m jobs.manifest 'data/**/*.jpg' s3://bucket/photos coco.json urls.txt --output M.parquet
    python -m jobs.manifest img2dataset_output/ --output M.parquet     # .tar shards, in place

Ids are paths relative to each SOURCE; rows are sorted by id (see pipeline/planning/sources.py).
A .tar gives a row per image member, joined with the img2dataset .parquet beside it (see
pipeline/planning/tar_sources.py).
With --probe or --sha256 each file is read; files that cannot be are left out and listed in
OUTPUT.unreadable.jsonl. Links to folders are skipped unless --follow-links (then each folder
is listed once: a link loop ends). Exit code: 0 when written (even with files left out); 2 for
bad input (a missing SOURCE, colliding ids, no image found).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from pipeline.errors import InputError
from pipeline.planning.manifest_writer import write_manifest
from pipeline.planning.probe import DEFAULT_THREADS, Probed, probe
from pipeline.planning.sources import list_sources


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog="python -m jobs.manifest", description=__doc__.split("\n")[0])
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="folder, glob, s3://, .json, .txt")
    p.add_argument("--output", required=True, help="the manifest: a .parquet path or s3:// URI")
    p.add_argument("--image-root", help="folder COCO file_name values are relative to")
    p.add_argument("--probe", action="store_true", help="width and height from image headers")
    p.add_argument("--sha256", action="store_true", help="sha256 of each file's bytes")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="reads in flight")
    p.add_argument(
        "--follow-links", action="store_true", help="enter links to folders, each folder once"
    )
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error("--threads must be at least 1")
    try:
        listing = list_sources(args.sources, args.image_root, args.follow_links)
        probed = Probed(listing.rows, ())
        if args.probe or args.sha256:
            probed = probe(listing.rows, args.probe, args.sha256, args.threads)
        rows, unreadable = probed.rows, probed.unreadable
        if not rows:
            raise InputError(f"no image found in {' '.join(args.sources)}; nothing written.")
        sidecar = write_manifest(rows, args.output, unreadable, listing.columns)
    except (InputError, OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if listing.skipped:
        kinds = ", ".join(f"{reason}: {n}" for reason, n in listing.skipped)
        print(f"skipped {sum(n for _, n in listing.skipped)} hidden or non-image file(s) ({kinds})")
    if listing.links:
        why = "already listed" if args.follow_links else "not entered (--follow-links enters them)"
        print(f"skipped {listing.links} link(s) to folders {why}")
    if listing.not_success:
        print(
            f"left out {listing.not_success} img2dataset row(s) whose status is not success "
            f"({listing.not_success_in_tar} of them with an image in the tar)"
        )
    if unreadable:
        print(f"{len(unreadable)} unreadable file(s) left out, all listed in {sidecar}:")
        for failure in unreadable[:5]:
            print(f"  {failure.uri}: {failure.error}: {failure.message}")
    print(f"{len(rows)} images in {args.output}. Label them with:")
    out = shlex.quote(args.output)
    print(f"  python -m jobs.label --manifest {out} --vocabulary VOCAB.txt --output OUTPUT")
    return 0


if __name__ == "__main__":
    sys.exit(main())
