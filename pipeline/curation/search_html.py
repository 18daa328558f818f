"""``OUTPUT/search/<slug>.html``: a query's top images with their overlays, one page.

The pictures are drawn as the report draws its review queue
(:func:`pipeline.reading.report_html.review_pictures`: ``[image | overlay | legend]`` from the
hits' rows of ``annotations/``), inline as ``data:`` URIs, so the page needs no network. A hit
with no annotation row (no pixel of it got a class) is listed without a picture.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
from collections import defaultdict
from collections.abc import Sequence

import pyarrow.compute as pc
import pyarrow.dataset as ds

from gclip.vocabulary import parse_json
from pipeline.curation.search import Hit, ImageId
from pipeline.curation.where import Clause
from pipeline.formats.coco import categories
from pipeline.formats.layout import SEARCH, annotation_table_path
from pipeline.formats.run_record import require_run
from pipeline.formats.storage import Storage, resolve
from pipeline.reading.report_data import ReviewCandidate
from pipeline.reading.report_html import _STYLE, ReviewPicture, review_pictures

_SLUG_CHARACTERS = re.compile(r"[^a-z0-9]+")


def slug(query: str, where: Sequence[Clause] = (), k: int = 0) -> str:
    """A file name for a query: its words (60 characters at most) and a short hash of the
    whole query, filters and ``k`` included, so distinct searches never share a page."""
    words = _SLUG_CHARACTERS.sub("-", query.lower()).strip("-")[:60].strip("-") or "query"
    key = "\n".join([query, *map(str, where), str(k)])
    return f"{words}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def write_search_page(
    output: str, title: str, hits: Sequence[Hit], where: Sequence[Clause], name: str
) -> str:
    """Write ``OUTPUT/search/<name>.html`` (atomically); return its location."""
    storage = Storage(output, create=False)
    run = require_run(storage)
    cats = tuple(categories(parse_json(run["vocabulary"])))
    drawable = _with_annotations(output, hits)
    candidates = tuple(
        ReviewCandidate(h.image_id, h.shard, math.nan) for h in hits if h.image_id in drawable
    )
    pictures = {p.candidate.image_id: p for p in review_pictures(output, candidates, cats)}
    relative = f"{SEARCH}/{name}.html"
    storage.write_atomic(relative, _page(output, title, hits, where, pictures).encode())
    return storage.uri(relative)


def _with_annotations(output: str, hits: Sequence[Hit]) -> set[ImageId]:
    """The ids of ``hits`` with at least one annotation row (only their shards' ids read)."""
    fs, base = resolve(output)
    by_shard: dict[int, list[ImageId]] = defaultdict(list)
    for hit in hits:
        by_shard[hit.shard].append(hit.image_id)
    found: set[ImageId] = set()
    for shard, ids in by_shard.items():
        table = ds.dataset(f"{base}/{annotation_table_path(shard)}", filesystem=fs).to_table(
            columns=["image_id"], filter=pc.field("image_id").isin(ids)
        )
        found.update(table["image_id"].to_pylist())
    return found


def _page(
    output: str,
    title: str,
    hits: Sequence[Hit],
    where: Sequence[Clause],
    pictures: dict[ImageId, ReviewPicture],
) -> str:
    figures = "".join(_figure(n, hit, pictures.get(hit.image_id)) for n, hit in enumerate(hits, 1))
    filters = " AND ".join(_e(c) for c in where) or "none"
    body = (
        f"<h1>Search: {_e(title)}</h1>"
        f"<p>Run {_e(output)} · filter: {filters} · {len(hits)} images, best first, by cosine "
        "similarity of the run's image embeddings to the query's.</p>"
        f'<div class="queue">{figures}</div>'
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Search: {_e(title)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def _figure(rank: int, hit: Hit, picture: ReviewPicture | None) -> str:
    caption = f"#{rank} <b>{_e(hit.image_id)}</b> · similarity {hit.score:.4f}"
    if picture is None:
        return f"<figure><figcaption>{caption}<br><i>no labelled pixel: no overlay</i></figcaption></figure>"
    extra = f"<br>{_e(picture.uri)}" + (
        f"<br><i>{_e(picture.problem)}</i>" if picture.problem else ""
    )
    return (
        f'<figure><img src="{picture.data_uri}" width="{picture.width}" '
        f'height="{picture.height}" alt="{_e(hit.image_id)}">'
        f"<figcaption>{caption}{extra}</figcaption></figure>"
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
