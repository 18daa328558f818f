"""``OUTPUT/report.html``: one self-contained page about a run, viewable with no network.

Sections: counts and settings, failures by cause, figures per class, and a review queue of the
lowest-confidence images drawn as ``[image | overlay | legend]``. Styles are inline, charts are
inline SVG and pictures are ``data:`` URIs, so the file can be mailed or opened from a bucket.
Every id, name, uri and message goes through :func:`html.escape`.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as ds
from PIL import Image

from pipeline.formats.coco import decode_label_map
from pipeline.formats.images import decode
from pipeline.formats.layout import REPORT, annotation_table_path
from pipeline.formats.run_record import RunRecord
from pipeline.formats.storage import Storage, read_bytes, resolve
from pipeline.reading.preview import render
from pipeline.reading.report_data import ClassFigures, ReportData, ReviewCandidate, gather

_MAX_PICTURE = (800, 800)  # review pictures are shrunk to fit, so 24 of them stay ~1-2 MB
_CLASS_ROWS = 300  # beyond this, a vocabulary's long tail is named, not charted (page size)
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;vertical-align:middle}
tr:nth-child(even){background:#f6f6f6}.num{text-align:right;font-variant-numeric:tabular-nums}
.figures{display:flex;flex-wrap:wrap;gap:12px}.figure{border:1px solid #ddd;padding:8px 14px}
.figure b{display:block;font-size:22px}.note{color:#666;font-size:12px}
.swatch{display:inline-block;width:12px;height:12px;border:1px solid #000;margin-right:6px}
.bar{display:inline-block;width:120px;height:10px;background:#eee;margin-right:6px}
.bar span{display:block;height:10px;background:#4a7bd0}
.queue{display:flex;flex-wrap:wrap;gap:16px}.queue figure{margin:0;max-width:100%}
.queue img{max-width:100%;max-height:320px;width:auto;height:auto;border:1px solid #ccc}
figcaption{font-size:12px;word-break:break-all}.state{padding:2px 8px;border-radius:4px}
.finished{background:#d4f0d4}.failed{background:#f6caca}.running,.interrupted{background:#fde9b5}
"""


def write_report(output: str, review: int = 24) -> str:
    """Write ``OUTPUT/report.html`` (atomically) and return its location.

    Args:
        output: a run's output folder (local, ``file://`` or ``s3://``).
        review: how many lowest-confidence images the review queue shows.

    Raises:
        InputError: ``output`` holds no run.
    """
    data = gather(output, review=review)
    pictures = review_pictures(output, data.review, data.categories)
    storage = Storage(output, create=False)
    storage.write_atomic(REPORT, page(data, pictures).encode())
    return storage.uri(REPORT)


@dataclass(frozen=True, slots=True)
class ReviewPicture:
    """A review image drawn for the page.

    Attributes:
        data_uri: ``data:image/png|jpeg;base64,...`` of ``[image | overlay | legend]``.
        width, height: the picture's size in pixels.
        problem: why the image itself is not shown (unreadable, or changed since labelling):
            the masks are then drawn over grey.
    """

    candidate: ReviewCandidate
    uri: str
    data_uri: str
    width: int
    height: int
    problem: str | None


def review_pictures(
    output: str, candidates: tuple[ReviewCandidate, ...], categories: tuple[dict[str, Any], ...]
) -> list[ReviewPicture]:
    """Draw the review queue, in its order.

    Only the ``annotations/`` files of the shards holding the candidates are opened, and only
    the candidates' rows of them are read (a filter on ``image_id``); each label map is decoded
    from those rows' RLE, as :func:`decode_label_map` rebuilds it from a COCO file.
    """
    fs, base = resolve(output)
    by_shard: dict[int, list[ReviewCandidate]] = defaultdict(list)
    for candidate in candidates:
        by_shard[candidate.shard].append(candidate)
    rows: dict[Any, list[dict[str, Any]]] = {}
    for shard, chosen in by_shard.items():
        table = ds.dataset(f"{base}/{annotation_table_path(shard)}", filesystem=fs).to_table(
            columns=["image_id", "category_id", "counts", "height", "width", "uri"],
            filter=pc.field("image_id").isin([c.image_id for c in chosen]),
        )
        for row in table.to_pylist():
            rows.setdefault(row["image_id"], []).append(row)
    index = {c["id"]: i for i, c in enumerate(categories)}
    return [_picture(c, rows[c.image_id], index, list(categories)) for c in candidates]


def _picture(
    candidate: ReviewCandidate,
    rows: list[dict[str, Any]],
    index: dict[int, int],
    categories: list[dict[str, Any]],
) -> ReviewPicture:
    size_hw = (rows[0]["height"], rows[0]["width"])
    annotations = [
        {"category_id": r["category_id"], "segmentation": {"size": size_hw, "counts": r["counts"]}}
        for r in rows
    ]
    labels_hw = decode_label_map(annotations, size_hw, index)
    uri = rows[0]["uri"]
    image_hwc, problem = _image(uri, size_hw)
    picture = render(image_hwc, labels_hw, categories)
    picture.thumbnail(_MAX_PICTURE)
    return ReviewPicture(candidate, uri, data_uri(picture), picture.width, picture.height, problem)


def _image(uri: str, size_hw: tuple[int, int]) -> tuple[np.ndarray, str | None]:
    """``H x W x 3`` uint8 pixels of a labelled image, or grey and why it cannot be shown."""
    grey = np.full((*size_hw, 3), 128, np.uint8)
    try:
        image_hwc = decode(read_bytes(uri))
    except (OSError, ValueError) as err:  # per-image boundary: one lost image keeps the page
        return grey, f"image not shown: {type(err).__name__}: {err}"
    if image_hwc.shape[:2] != size_hw:
        h, w = image_hwc.shape[:2]
        return grey, f"image not shown: it is {w}x{h} now, labelled at {size_hw[1]}x{size_hw[0]}"
    return image_hwc, None


def page(data: ReportData, pictures: list[ReviewPicture]) -> str:
    """The whole HTML document."""
    run = data.run
    sections = [
        f"<h1>Labelling report: {_e(data.output)}</h1>",
        f'<p>Run <span class="state {_e(run["state"])}">{_e(run["state"])}</span>, '
        f"started {_e(run['timings'].get('started', '?'))}"
        + (f", {run['timings']['seconds']} s" if "seconds" in run["timings"] else "")
        + (f"</p><p><b>Error:</b> {_e(run['error'])}" if run.get("error") else "")
        + "</p>",
        '<p><a href="#counts">counts</a> · <a href="#settings">settings</a> · '
        '<a href="#failures">failures</a> · <a href="#classes">classes</a> · '
        '<a href="#review">review queue</a></p>',
        _counts(data),
        _settings(run, len(data.categories)),
        _failures(data),
        _classes(data.classes),
        _review(pictures, data.totals.images_without_labels),
    ]
    body = "\n".join(sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Report: {_e(data.output)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def _counts(data: ReportData) -> str:
    t = data.totals
    figures = [
        ("images labelled", f"{t.images_labelled:,}"),
        ("images failed", f"{t.images_failed:,}"),
        ("annotations", f"{t.annotations:,}"),
        ("shards finished", f"{t.shards_done:,} / {t.shards_planned:,}"),
    ]
    retries = data.run.get("counts", {}).get("retries") or {}
    if retries:
        figures.append(("attempts retried", ", ".join(f"{n} {k}" for k, n in retries.items())))
    cells = "".join(f'<div class="figure"><b>{_e(v)}</b>{_e(k)}</div>' for k, v in figures)
    return (
        '<h2 id="counts">Counts</h2>'
        f'<div class="figures">{cells}</div>'
        '<p class="note">Over the shards whose files are complete (marker in place).</p>'
    )


def _settings(run: RunRecord, classes: int) -> str:
    config = run.config
    rows = [
        ("model", config["model"]),
        ("weights", run.weights or config["pretrained"]),
        ("method", ", ".join(f"{k}={v}" for k, v in run.method.items())),
        ("vocabulary", f"{classes} classes"),
        ("threshold", config.get("threshold")),
        ("inference", ", ".join(f"{k}={v}" for k, v in config["inference"].items())),
        ("shard size", config.get("shard_size")),
    ]
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<h2 id="settings">Settings</h2><table>{body}</table>'


def _failures(data: ReportData) -> str:
    if not data.failures_by_error:
        return '<h2 id="failures">Failures</h2><p>No image failed.</p>'
    causes = "".join(
        f'<tr><td>{_e(error)}</td><td class="num">{n:,}</td></tr>'
        for error, n in data.failures_by_error.items()
    )
    examples = "".join(
        f"<tr><td>{_e(f.image_id)}</td><td>{_e(f.uri)}</td><td>{_e(f.error)}</td>"
        f"<td>{_e(f.message)}</td></tr>"
        for f in data.failure_examples
    )
    return (
        '<h2 id="failures">Failures by cause</h2>'
        f"<table><tr><th>error</th><th>images</th></tr>{causes}</table>"
        "<h3>Examples</h3><table><tr><th>image_id</th><th>uri</th><th>error</th>"
        f"<th>message</th></tr>{examples}</table>"
    )


def _classes(classes: tuple[ClassFigures, ...]) -> str:
    shown = [c for c in classes if c.images][:_CLASS_ROWS]
    rows = "".join(
        "<tr>"
        f"<td>{_swatch(c.category)}{_e(c.category['name'])}</td>"
        f'<td class="num">{c.images:,}</td><td>{_bar(c.image_share)}</td>'
        f"<td>{_bar(c.pixel_share)}</td><td>{_histogram(c.confidence_bins)}</td>"
        "</tr>"
        for c in shown
    )
    unseen = [c.category["name"] for c in classes if not c.images]
    rest = len([c for c in classes if c.images]) - len(shown)
    tail = ""
    if rest:
        tail += f"<p>{rest} more predicted classes are not charted (figures in summary/).</p>"
    if unseen:
        names = ", ".join(_e(n) for n in unseen[:50]) + (" …" if len(unseen) > 50 else "")
        tail += f"<p>Never predicted ({len(unseen)}): {names}</p>"
    return (
        '<h2 id="classes">Classes</h2>'
        '<p class="note">By share of labelled pixels (sum of annotation areas, unlabelled pixels '
        "left out). <i>Images</i>: labelled images where the class covers a pixel. "
        "<i>Confidence</i>: histogram of the per-image mean confidences of the class (the "
        "<code>mean_confidence</code> column of <code>summary/</code>), bins of 0.1 from 0 "
        "(left) to 1 (right).</p>"
        "<table><tr><th>class</th><th>images</th><th>share of images</th>"
        f"<th>share of pixels</th><th>confidence</th></tr>{rows}</table>{tail}"
    )


def _review(pictures: list[ReviewPicture], without_labels: int) -> str:
    figures = "".join(
        f'<figure><img src="{p.data_uri}" width="{p.width}" height="{p.height}" '
        f'alt="{_e(p.candidate.image_id)}">'
        f"<figcaption>#{n} <b>{_e(p.candidate.image_id)}</b> · mean confidence "
        f"{p.candidate.mean_confidence:.3f}<br>{_e(p.uri)}"
        + (f"<br><i>{_e(p.problem)}</i>" if p.problem else "")
        + "</figcaption></figure>"
        for n, p in enumerate(pictures, start=1)
    )
    note = (
        f" {without_labels:,} labelled images have no labelled pixel at all (no mean "
        "confidence) and are not in the queue."
        if without_labels
        else ""
    )
    return (
        '<h2 id="review">Review queue</h2>'
        f'<p class="note">The {len(pictures)} images with the lowest mean confidence, lowest '
        "first: per image, sum(pixel_fraction × mean_confidence) / sum(pixel_fraction) over its "
        f"classes in <code>summary/</code>.{note}</p>"
        f'<div class="queue">{figures}</div>'
    )


def _histogram(bins: tuple[int, ...], width: int = 120, height: int = 24) -> str:
    """Inline SVG bars, one per bin, heights relative to the fullest bin."""
    top = max(bins) or 1
    step = width / len(bins)
    bars = "".join(
        f'<rect x="{i * step:.1f}" y="{height - height * n / top:.1f}" width="{step - 1:.1f}" '
        f'height="{height * n / top:.1f}" fill="#4a7bd0"><title>{i / len(bins):.1f}–'
        f"{(i + 1) / len(bins):.1f}: {n}</title></rect>"
        for i, n in enumerate(bins)
    )
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><rect width="{width}" height="{height}" '
        f'fill="#f0f0f0"/>{bars}</svg>'
    )


def _bar(share: float) -> str:
    return f'<span class="bar"><span style="width:{100 * share:.1f}%"></span></span>{share:.1%}'


def _swatch(category: dict[str, Any]) -> str:
    r, g, b = category.get("color", (255, 0, 255))
    return f'<span class="swatch" style="background:rgb({int(r)},{int(g)},{int(b)})"></span>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def data_uri(picture: Image.Image) -> str:
    """The picture as PNG or JPEG (quality 85), whichever is smaller, in a ``data:`` URI."""
    encoded = []
    for kind, options in (("png", {"optimize": True}), ("jpeg", {"quality": 85})):
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, format=kind.upper(), **options)
        encoded.append((len(buffer.getvalue()), kind, buffer.getvalue()))
    _, kind, data = min(encoded)
    return f"data:image/{kind};base64,{base64.b64encode(data).decode('ascii')}"
