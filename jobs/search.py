"""Search a labelled run's images by text or by image: ``python -m jobs.search OUTPUT TEXT``.

Ranks the run's images (labelled with ``--embeddings``) by cosine similarity to the query,
embedded by the run's own model (a text through its prompt templates, as vocabulary names
are), prints the top ids with their scores and writes ``OUTPUT/search/<slug>.html`` showing
them with their overlays. ``--where`` keeps only images passing filters on ``summary/``.
Exact: the embeddings are read a shard at a time, a running top-k kept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import PurePosixPath

from gclip import WeightsUnavailableError, parse_json
from pipeline.curation import open_embeddings, parse_where, top_k
from pipeline.curation.queries import image_query, run_segmenter, text_query
from pipeline.curation.search_html import slug, write_search_page
from pipeline.errors import InputError
from pipeline.formats.coco import categories
from pipeline.formats.run_record import require_run
from pipeline.formats.storage import Storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.search", description=__doc__.split("\n")[0]
    )
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument("text", nargs="?", help='what to look for, e.g. "a red car at night"')
    parser.add_argument("--image", help="search by this image instead (path, s3:// or http(s))")
    parser.add_argument("--top", type=int, default=50, help="images to return (default 50)")
    parser.add_argument(
        "--where", action="append", default=[], metavar="FILTER",
        help='e.g. "car>0.1 AND mean_confidence>=0.5": a class\'s pixel share or the image\'s '
        "mean confidence against a number; repeat to AND more",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if (args.text is None) == (args.image is None):
        parser.error("give a search TEXT or --image QUERY.jpg (one of the two)")
    if args.top < 1:
        parser.error("--top must be 1 or more")
    try:
        run = require_run(Storage(args.output, create=False))
        names = [c["name"] for c in categories(parse_json(run["vocabulary"]))]
        where = parse_where(args.where, names)
        open_embeddings(args.output)  # refuse a run without embeddings before loading a model
        segmenter = run_segmenter(args.output)
        if args.image is not None:
            query, title = image_query(segmenter, args.image), f"image {args.image}"
            name = slug(f"image {PurePosixPath(args.image).stem}", where, args.top)
        else:
            query, title = text_query(segmenter, args.text), args.text
            name = slug(args.text, where, args.top)
        hits = top_k(args.output, query, args.top, where)
        page = write_search_page(args.output, title, hits, where, name)
    except (InputError, WeightsUnavailableError) as err:  # the run's weights went missing
        print(f"error: {err}", file=sys.stderr)
        return 2
    for rank, hit in enumerate(hits, start=1):
        print(f"{rank:4d}  {hit.score:.4f}  {hit.image_id}")
    print(f"{len(hits)} images; page written: {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
