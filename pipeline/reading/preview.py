"""Preview PNGs: the image, the same image with its coloured mask, and a legend."""

from __future__ import annotations

import io
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
_MAX_SIDE = 640  # previews are for eyes: the [image | overlay] pair is scaled to about this width


def render(
    image_hwc: np.ndarray, labels_hw: np.ndarray, categories: list[dict[str, Any]]
) -> Image.Image:
    """``[image | overlay | legend]`` as one RGB picture; unlabelled and background pixels stay
    uncoloured so the objects stand out."""
    _, unlabelled = label_format(len(categories))
    palette = np.zeros((unlabelled + 1, 3), np.float32)
    for index, category in enumerate(categories):
        palette[index] = category.get("color", (255, 0, 255))
    background = [i for i, c in enumerate(categories) if c.get("supercategory") == "background"]
    painted = (labels_hw != unlabelled) & ~np.isin(labels_hw, background)
    overlay = image_hwc.astype(np.float32)
    overlay[painted] = (1 - _ALPHA) * overlay[painted] + _ALPHA * palette[labels_hw[painted]]
    overlay[_edges(labels_hw)] = 255  # white outlines keep masks readable over any colour
    pair = np.concatenate([image_hwc, overlay.astype(np.uint8)], axis=1)
    picture = Image.fromarray(pair)
    # Shrink large images, enlarge tiny ones (nearest, so label edges stay crisp).
    scale = _MAX_SIDE / max(picture.size)
    if scale < 1.0 or scale >= 2.0:
        scale = scale if scale < 1.0 else float(int(scale))
        size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
        picture = picture.resize(
            size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.BILINEAR
        )
    present = [i for i in np.unique(labels_hw) if i != unlabelled]
    return _with_legend(
        picture, [(categories[i]["name"], tuple(int(v) for v in palette[i])) for i in present]
    )


def _edges(labels_hw: np.ndarray) -> np.ndarray:
    """``H x W`` bool: pixels whose right or lower neighbour has another label."""
    edges = np.zeros(labels_hw.shape, bool)
    edges[:, :-1] |= labels_hw[:, :-1] != labels_hw[:, 1:]
    edges[:-1, :] |= labels_hw[:-1, :] != labels_hw[1:, :]
    return edges


def _with_legend(picture: Image.Image, entries: list[tuple[str, tuple[int, ...]]]) -> Image.Image:
    font = ImageFont.load_default()
    row = 14
    width = 10 + max([int(font.getlength(name)) for name, _ in entries] + [60]) + 24
    height = max(picture.height, row * len(entries) + 10)
    canvas = Image.new("RGB", (picture.width + width, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, (name, color) in enumerate(entries):
        y = 5 + n * row
        draw.rectangle(
            [picture.width + 6, y, picture.width + 16, y + 10], fill=color, outline=(0, 0, 0)
        )
        draw.text((picture.width + 22, y - 1), name, fill=(0, 0, 0), font=font)
    return canvas


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
