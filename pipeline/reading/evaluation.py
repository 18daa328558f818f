"""Scoring a run's ``annotations.json`` against ground truth (COCO file or PNG label maps).

Ground truth as PNG: one single-channel PNG per image, named ``<image_id>.png`` (ids that are
not safe file names as ``--png-labels`` names them: ``_<hash>.png``); pixel values
are vocabulary class indices (``values="indices"``, the layout ``--png-labels`` writes) or
category ids (``values="ids"``); 255 is ignored (65535 in the 16-bit maps of vocabularies
over 255 classes). Ground truth as COCO: images matched to the
manifest's ``image_id`` by ``id``, by file name without extension, or by file-name stem;
category ids as in the vocabulary; polygons and RLE both read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import numpy as np
from PIL import Image

from gclip.metrics import SegmentationScores, confusion_matrix, scores
from gclip.vocabulary import label_format
from pipeline.formats.coco import CocoLabelMaps
from pipeline.formats.layout import label_file_name
from pipeline.formats.storage import read_bytes
from pipeline.reading.predictions import Predictions

GroundTruth = Callable[[dict[str, Any]], "np.ndarray | None"]  # image record -> labels or None


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Scores of one run, with the class names they refer to."""

    class_names: tuple[str, ...]
    scores: SegmentationScores
    images: int
    missing: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        s = self.scores
        return {
            "classes": list(self.class_names),
            "iou": {
                n: (None if np.isnan(v) else float(v))
                for n, v in zip(self.class_names, s.iou, strict=True)
            },
            "miou": s.miou,
            "pixel_accuracy": s.pixel_accuracy,
            "confusion": s.confusion.tolist(),
            "confusion_columns": [*self.class_names, "unlabelled"],
            "images": self.images,
            "images_without_ground_truth": list(self.missing),
        }

    def table(self) -> str:
        """A Markdown table: per-class IoU, then mIoU and pixel accuracy."""
        lines = ["| class | IoU |", "|---|---|"]
        for name, value in zip(self.class_names, self.scores.iou, strict=True):
            lines.append(f"| {name} | {'n/a' if np.isnan(value) else f'{value:.3f}'} |")
        lines.append(f"| **mIoU** | **{self.scores.miou:.3f}** |")
        lines.append(f"| pixel accuracy | {self.scores.pixel_accuracy:.3f} |")
        return "\n".join(lines)


def evaluate(predictions: str, ground_truth: str, values: str = "indices") -> Evaluation:
    """Score ``predictions`` (a run's output folder, or a COCO file) against ``ground_truth``.

    One confusion matrix over every image, read one shard file at a time.
    """
    categories: list[dict[str, Any]] = []
    confusion = np.zeros((0, 1), np.int64)
    truth_for: GroundTruth | None = None
    missing, count = [], 0
    for coco in Predictions(predictions):
        predicted_maps = CocoLabelMaps(coco)
        if truth_for is None:
            categories = coco["categories"]
            k = len(categories)
            confusion = np.zeros((k, k + 1), np.int64)
            truth_for = _ground_truth_reader(ground_truth, predicted_maps.category_to_index, values)
        for image in coco["images"]:
            truth = truth_for(image)
            if truth is None:
                missing.append(str(image["image_id"]))
                continue
            prediction = predicted_maps.label_map(image)
            confusion += confusion_matrix(truth, prediction, k, label_format(k)[1])
            count += 1
    if count == 0:
        raise ValueError(
            f"No prediction in {predictions} has ground truth in {ground_truth}; check the image ids."
        )
    return Evaluation(
        tuple(c["name"] for c in categories), scores(confusion), count, tuple(missing)
    )


def _ground_truth_reader(location: str, index_of: dict[int, int], values: str) -> GroundTruth:
    if location.endswith(".json"):
        return _coco_reader(json.loads(read_bytes(location)), index_of)
    if values not in ("indices", "ids"):
        raise ValueError(f"values must be 'indices' or 'ids', got {values!r}.")
    dtype, ignore = label_format(len(index_of))
    lookup = np.full(ignore + 1, ignore, dtype)  # file value -> class index; the rest ignored
    for category_id, index in index_of.items():
        if values == "ids" and 0 <= category_id < ignore:
            lookup[category_id] = index
    if values == "indices":
        lookup[: len(index_of)] = np.arange(len(index_of), dtype=dtype)

    def read(image: dict[str, Any]) -> np.ndarray | None:
        file = f"{location.rstrip('/')}/{label_file_name(image['image_id'])}"
        try:
            data = read_bytes(file)
        except (FileNotFoundError, OSError):
            return None
        raw = np.asarray(Image.open(io.BytesIO(data)))
        if raw.ndim != 2:
            raise ValueError(f"{file} is not a single-channel label map (shape {raw.shape}).")
        if raw.shape != (image["height"], image["width"]):
            raise ValueError(
                f"{file} is {raw.shape}, the prediction {image['height']}x{image['width']}."
            )
        return lookup[np.minimum(raw, ignore)]

    return read


def _coco_reader(gt: dict[str, Any], index_of: dict[int, int]) -> GroundTruth:
    by_key: dict[str, dict[str, Any]] = {}
    for image in gt["images"]:
        by_key[str(image["id"])] = image
        name = PurePosixPath(image.get("file_name", ""))
        by_key.setdefault(str(name), image)  # ids of a manifest made from this COCO file
        by_key.setdefault(str(name.with_suffix("")), image)  # "train/img_7.jpg" -> "train/img_7"
        by_key.setdefault(name.stem, image)  # -> "img_7"
    truth_maps = CocoLabelMaps(gt, index_of)

    def read(image: dict[str, Any]) -> np.ndarray | None:
        gt_image = by_key.get(str(image["image_id"]))
        return None if gt_image is None else truth_maps.label_map(gt_image)

    return read
