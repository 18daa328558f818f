"""Preview PNGs: the image, the same image with its coloured mask, and a legend."""

from __future__ import annotations

import io
import math
import random
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gclip.vocabulary import label_format
from pipeline.formats.coco import CocoLabelMaps
from pipeline.formats.images import decode
from pipeline.formats.layout import PREVIEWS, label_file_name
from pipeline.formats.storage import Storage, read_bytes
from pipeline.reading.predictions import Predictions

_ALPHA = 0.6
# Previews are for eyes: each panel is drawn at least _MIN_HEIGHT high (small images enlarged)
# and large ones shrunk to about _MAX_SIDE on their longer side; _MAX_WIDTH bounds the cost of
# extreme aspect ratios (a panorama may then stay lower than _MIN_HEIGHT).
_MIN_HEIGHT = 256
_MAX_SIDE = 512
_MAX_WIDTH = 2048
_GAP = 12  # neutral space between image, overlay and legend, so they never read as one image
_CANVAS = (228, 228, 228)
_INK = (30, 30, 30)  # legend text and swatch borders
_FONT_SIZE = 14
_SWATCH = 14


def render(
    image_hwc: np.ndarray, labels_hw: np.ndarray, categories: list[dict[str, Any]]
) -> Image.Image:
    """The image, the image under its coloured labels, and a legend, side by side.

    Unlabelled and background pixels stay uncoloured so the objects stand out; each label
    region is outlined in white.

    Args:
        image_hwc: ``H x W x 3`` uint8 RGB pixels.
        labels_hw: ``H x W`` class indices into ``categories`` (uint8 or uint16, the
            vocabulary's unlabelled value for unlabelled pixels).
        categories: COCO categories in class-index order; ``color`` is used when present.

    Returns:
        An RGB picture ``[image | gap | overlay | gap | legend]``; the panels are at least
        ``_MIN_HEIGHT`` pixels high unless the image is extremely wide.
    """
    _, unlabelled = label_format(len(categories))
    palette = np.zeros((unlabelled + 1, 3), np.float32)
    for index, category in enumerate(categories):
        palette[index] = category.get("color", (255, 0, 255))
    background = [i for i, c in enumerate(categories) if c.get("supercategory") == "background"]
    # 1. Scale: the image with a smooth filter, the labels by nearest neighbour (crisp masks).
    out_h, out_w = _panel_hw(labels_hw.shape)
    image = Image.fromarray(np.ascontiguousarray(image_hwc, dtype=np.uint8))
    if image.size != (out_w, out_h):
        image = image.resize((out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    panel_hwc = np.asarray(image)
    rows = np.arange(out_h) * labels_hw.shape[0] // out_h
    cols = np.arange(out_w) * labels_hw.shape[1] // out_w
    panel_labels_hw = labels_hw[rows[:, None], cols[None, :]]
    # 2. Paint the labels over the scaled image, outlined at the preview's own resolution.
    painted = (panel_labels_hw != unlabelled) & ~np.isin(panel_labels_hw, background)
    overlay = panel_hwc.astype(np.float32)
    colors = palette[panel_labels_hw[painted]]
    overlay[painted] = (1 - _ALPHA) * overlay[painted] + _ALPHA * colors
    overlay[_edges(panel_labels_hw)] = 255  # white outlines keep masks readable over any colour
    # 3. Legend: every class present, background with an empty swatch (it is not painted).
    entries = [
        (categories[i]["name"], None if i in background else tuple(int(v) for v in palette[i]))
        for i in np.unique(labels_hw)
        if i != unlabelled
    ]
    return _side_by_side(image, Image.fromarray(overlay.astype(np.uint8)), entries)


def _panel_hw(size_hw: tuple[int, ...]) -> tuple[int, int]:
    """``(height, width)`` a panel is drawn at: see ``_MIN_HEIGHT``, ``_MAX_SIDE``."""
    h, w = size_hw[0], size_hw[1]
    scale = min(1.0, _MAX_SIDE / max(h, w))
    if h * scale < _MIN_HEIGHT:
        scale = _MIN_HEIGHT / h
        if scale > 1:
            scale = float(math.ceil(scale))  # whole factors enlarge every label pixel alike
    scale = min(scale, _MAX_WIDTH / w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def _edges(labels_hw: np.ndarray) -> np.ndarray:
    """``H x W`` bool: pixels whose right or lower neighbour has another label."""
    edges = np.zeros(labels_hw.shape, bool)
    edges[:, :-1] |= labels_hw[:, :-1] != labels_hw[:, 1:]
    edges[:-1, :] |= labels_hw[:-1, :] != labels_hw[1:, :]
    return edges


def _side_by_side(
    image: Image.Image, overlay: Image.Image, entries: list[tuple[str, tuple[int, ...] | None]]
) -> Image.Image:
    """``[image | overlay | legend]`` on a neutral canvas, ``_GAP`` apart and around."""
    font = _font()
    row = _SWATCH + 6
    text_w = max([int(font.getlength(name)) for name, _ in entries] + [60])
    legend_w = _SWATCH + 8 + text_w
    height = max(image.height, row * len(entries) - 6) + 2 * _GAP
    width = image.width + overlay.width + legend_w + 4 * _GAP
    canvas = Image.new("RGB", (width, height), _CANVAS)
    canvas.paste(image, (_GAP, _GAP))
    canvas.paste(overlay, (2 * _GAP + image.width, _GAP))
    draw = ImageDraw.Draw(canvas)
    x = 3 * _GAP + image.width + overlay.width
    for n, (name, color) in enumerate(entries):
        y = _GAP + n * row
        # A 1 px dark border keeps pale swatches visible; an empty one means "not painted".
        draw.rectangle(
            [x, y, x + _SWATCH - 1, y + _SWATCH - 1], fill=color or _CANVAS, outline=_INK
        )
        draw.text((x + _SWATCH + 8, y + _SWATCH // 2), name, fill=_INK, font=font, anchor="lm")
    return canvas


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=_FONT_SIZE)
    except TypeError:  # Pillow < 10.1: only the small bitmap font
        return ImageFont.load_default()


def write_previews(output: str, count: int = 8, seed: int = 0, folder: str = PREVIEWS) -> list[str]:
    """Render ``count`` sampled images of a run into ``OUTPUT/<folder>/``; return their paths.

    The sample is drawn shard first (a few shard files are read, not the whole run), then an
    image within each; the same ``seed`` draws the same images.
    """
    storage = Storage(output)
    predictions = Predictions(output)
    rng = random.Random(seed)
    files = sorted(rng.sample(predictions.files, min(count, len(predictions.files))))
    per_file = -(-count // max(1, len(files)))
    written: list[str] = []
    for relative in files:
        coco = predictions.read(relative)
        images = sorted(coco["images"], key=lambda im: im["id"])
        label_maps = CocoLabelMaps(coco)
        for image in sorted(rng.sample(images, min(per_file, len(images))), key=lambda i: i["id"]):
            if len(written) == count:
                break
            pixels = decode(read_bytes(image["file_name"]))
            buffer = io.BytesIO()
            picture = render(pixels, label_maps.label_map(image), coco["categories"])
            picture.save(buffer, format="PNG")
            relative_png = f"{folder}/{label_file_name(image['image_id'])}"
            storage.write_atomic(relative_png, buffer.getvalue())
            written.append(storage.uri(relative_png))
    return written
