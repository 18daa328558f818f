"""``DIR/compare.html``: one self-contained page comparing the variants on the sample.

A table of the variants (settings, class coverage, mean confidence, and with ground truth mIoU
and pixel accuracy, the best marked), then a row per sampled image and a column per variant,
each cell the image, its overlay and legend as ``jobs.report`` draws them
(:func:`pipeline.reading.preview.render`, ``data:`` URIs), so the page needs no network.
Every id, name and setting goes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.comparing.figures import VariantFigures
from pipeline.formats.coco import CocoLabelMaps
from pipeline.formats.images import decode
from pipeline.formats.storage import read_bytes
from pipeline.reading.predictions import Predictions
from pipeline.reading.preview import render
from pipeline.reading.report_html import data_uri

_PICTURE = (720, 240)  # each cell's [image | overlay | legend], shrunk to fit
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse}td,th{padding:4px 10px;text-align:left;vertical-align:top}
tr:nth-child(even){background:#f6f6f6}.num{text-align:right;font-variant-numeric:tabular-nums}
.best{background:#d4f0d4!important}code{font-size:12px;white-space:pre-wrap}
.grid img{max-width:360px;height:auto;border:1px solid #ccc}.note{color:#666;font-size:12px}
"""


@dataclass(frozen=True, slots=True)
class Column:
    """One variant as the page shows it."""

    name: str
    file: str
    settings: Mapping[str, Any]
    output: str
    figures: VariantFigures


def page(
    manifest: str,
    seed: int,
    sample: Sequence[dict[str, Any]],
    columns: Sequence[Column],
    best: str | None,
) -> str:
    """The whole HTML document; ``sample``: the sample's rows (``image_id``, ``uri``)."""
    scored = any(c.figures.evaluation for c in columns)
    body = "\n".join(
        [
            f"<h1>Comparison of {len(columns)} variants on {len(sample)} images</h1>",
            f'<p class="note">Sample of {_e(manifest)}, seed {seed} (DIR/sample.parquet). '
            + (f"Best by mIoU: <b>{_e(best)}</b> (DIR/best.json)." if best else "")
            + "</p>",
            _variants(columns, best, scored),
            _grid(sample, columns),
        ]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Comparison: {_e(manifest)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def _variants(columns: Sequence[Column], best: str | None, scored: bool) -> str:
    head = ["variant", "settings", "images", "classes covered", "labelled pixels", "mean conf."]
    head += ["mIoU", "pixel acc."] if scored else []
    rows = []
    for c in columns:
        f = c.figures
        cells = [
            f"<b>{_e(c.name)}</b><br><span class='note'>{_e(c.file)}</span>",
            f"<code>{_e(json.dumps(dict(c.settings), indent=1))}</code>",
            f"{f.images_labelled} labelled"
            + (f", {f.images_failed} failed" if f.images_failed else ""),
            f"{len(f.classes_covered)} / {f.classes}<br><span class='note'>"
            f"{_e(', '.join(f.classes_covered))}</span>",
            f"{f.labelled_share:.1%}",
            "-" if f.mean_confidence is None else f"{f.mean_confidence:.3f}",
        ]
        if scored:
            s = f.evaluation.scores if f.evaluation else None
            cells += [f"{s.miou:.2%}", f"{s.pixel_accuracy:.2%}"] if s else ["-", "-"]
        mark = ' class="best"' if c.name == best else ""
        rows.append(f"<tr{mark}>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    return (
        '<h2 id="variants">Variants</h2><p class="note">Settings: each variant\'s file; what it '
        "leaves out came from the command line, then the checkpoint and the defaults (each "
        "variant's run.json holds them all). Classes covered: classes with at least one "
        "labelled pixel. Mean confidence: over images, of each image's labelled pixels."
        + (
            " mIoU as <code>jobs.evaluate</code> scores it on the sample's ground truth."
            if scored
            else ""
        )
        + "</p><table><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(rows)
        + "</table>"
    )


def _grid(sample: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    labels = [_label_maps(c.output) for c in columns]
    head = "<tr><th>image</th>" + "".join(f"<th>{_e(c.name)}</th>" for c in columns) + "</tr>"
    rows = []
    for row in sample:
        pixels_hwc: np.ndarray | None = None
        note = ""
        try:
            pixels_hwc = decode(read_bytes(row["uri"]))
        except (OSError, ValueError) as err:  # one unreadable image keeps the page
            note = f"image not shown: {type(err).__name__}: {err}"
        cells = [f"<td><b>{_e(row['image_id'])}</b><br><span class='note'>{_e(note)}</span></td>"]
        for column, maps in zip(columns, labels, strict=True):
            image_id = row["image_id"]
            cells.append(f"<td>{_cell(column, image_id, maps.get(image_id), pixels_hwc)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<h2 id="images">Images</h2><p class="note">Each cell: the image, its labels over it '
        "(background and unlabelled pixels left uncoloured), the legend of the classes present, "
        "and the image's mean confidence.</p>"
        f'<table class="grid">{head}{"".join(rows)}</table>'
    )


# An image's COCO record, its file's decoder and categories: decoded per cell, as drawn, so
# memory holds RLE, not every variant's label maps of every image.
_Labels = tuple[dict[str, Any], CocoLabelMaps, list[dict[str, Any]]]


def _label_maps(output: str) -> dict[Any, _Labels]:
    """Each labelled image's COCO record, decoder and categories, by ``image_id``."""
    maps: dict[Any, _Labels] = {}
    for coco in Predictions(output):
        decoder = CocoLabelMaps(coco)
        for image in coco["images"]:
            maps[image["image_id"]] = (image, decoder, coco["categories"])
    return maps


def _cell(
    column: Column, image_id: Any, labels: _Labels | None, pixels_hwc: np.ndarray | None
) -> str:
    if labels is None:
        return "<i>not labelled (the image failed: see the variant's run)</i>"
    image, decoder, categories = labels
    labels_hw = decoder.label_map(image)
    if pixels_hwc is None or pixels_hwc.shape[:2] != labels_hw.shape:
        pixels_hwc = np.full((*labels_hw.shape, 3), 128, np.uint8)  # masks over grey
    picture = render(pixels_hwc, labels_hw, categories)
    picture.thumbnail(_PICTURE)
    confidence = column.figures.image_confidence.get(str(image_id))
    caption = "no labelled pixel" if confidence is None else f"mean confidence {confidence:.3f}"
    return (
        f'<img src="{data_uri(picture)}" width="{picture.width}" height="{picture.height}" '
        f'alt="{_e(image_id)}, {_e(column.name)}"><br><span class="note">{caption}</span>'
    )


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)
