"""Scores of a set of predictions against ground truth: the one record, accumulator and writer
behind ``jobs.evaluate`` (a run's COCO predictions) and ``jobs.benchmark`` (a split's label maps).

Both score as mmsegmentation's ``IoUMetric``: one confusion matrix over every image, ground-truth
pixels at the ignore value skipped, IoU per class from summed intersections over summed unions,
mIoU over the classes whose union is not empty. The images scored are the ground truth's.
:data:`MISSED`: an image with ground truth but no prediction is *missed*; its pixels count as
wrong (the confusion matrix's ``unlabelled`` column). A prediction without ground truth is
named, not scored.

Ground truth as PNG: one single-channel PNG per image, named ``<image_id>.png`` (ids that are
not safe file names as ``--png-labels`` names them: ``_<hash>.png``); every PNG under the folder
is ground truth. Pixel values are vocabulary class indices (``values="indices"``, the layout
``--png-labels`` writes) or category ids (``values="ids"``); 255 is ignored (65535 in the 16-bit
maps of vocabularies over 255 classes). Ground truth as COCO: images matched to the manifest's
``image_id`` by ``id``, by file name without extension, or by file-name stem; category ids as in
the vocabulary; polygons and RLE both read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Protocol

import numpy as np
import pyarrow.fs as pafs
from PIL import Image

import schemas
from gclip.metrics import SegmentationScores, confusion_matrix, scores
from gclip.vocabulary import label_format
from pipeline.formats.coco import CocoLabelMaps
from pipeline.formats.layout import EVALUATION, EVALUATION_TABLE, label_file_name
from pipeline.formats.storage import Storage, read_bytes, resolve
from pipeline.reading.predictions import Predictions

MISSED = (
    "an image with ground truth but no prediction is missed: its pixels count as wrong, "
    "as mmsegmentation's IoUMetric counts them"
)


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Scores of a set of predictions against ground truth, with the class names they refer to.

    Attributes:
        class_names: one name per class index, in label order.
        scores: from the confusion matrix over every image scored.
        images: images scored: every image with ground truth, the missed ones included.
        missed: ids of the images with ground truth but no prediction (see :data:`MISSED`).
        without_truth: ids of the predicted images without ground truth (not scored).
    """

    class_names: tuple[str, ...]
    scores: SegmentationScores
    images: int
    missed: tuple[str, ...] = ()
    without_truth: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The scores' fields of ``evaluation.json`` and ``benchmark.json`` (IoU as fractions;
        ``schemas/evaluation.schema.json#/$defs/scores``)."""
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
            "images_missed": list(self.missed),
            "images_without_ground_truth": list(self.without_truth),
        }

    def markdown(self, heading: str = "") -> str:
        """``heading``, then a Markdown table of per-class IoU, mIoU and pixel accuracy
        (percent), then the counts."""
        lines = [heading + "| class | IoU (%) |", "|---|---|"]
        for name, value in zip(self.class_names, self.scores.iou, strict=True):
            lines.append(f"| {name} | {'n/a' if np.isnan(value) else f'{100 * value:.2f}'} |")
        lines.append(f"| **mIoU** | **{100 * self.scores.miou:.2f}** |")
        lines.append(f"| pixel accuracy | {100 * self.scores.pixel_accuracy:.2f} |")
        lines += ["", self.counts() + "."]
        return "\n".join(lines) + "\n"

    def counts(self) -> str:
        """One line: images scored, missed (and what that means), predictions without truth."""
        line = f"{self.images} images scored, {len(self.missed)} missed ({MISSED})"
        if self.without_truth:
            line += f"; {len(self.without_truth)} predictions without ground truth, not scored"
        return line


class ConfusionAccumulator:
    """One ``K x (K + 1)`` confusion matrix over a set of images, added one at a time.

    Args:
        class_names: one name per class index; ground truth at ``label_format(K)``'s ignore
            value (255, or 65535 beyond 255 classes) is skipped.
    """

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = tuple(class_names)
        k = len(self.class_names)
        self._ignore = label_format(k)[1]
        self._confusion_kk1 = np.zeros((k, k + 1), np.int64)  # truth x (prediction, unlabelled)
        self._images = 0
        self._missed: list[str] = []
        self._without_truth: list[str] = []

    @property
    def images(self) -> int:
        """Images with ground truth added so far, missed ones included."""
        return self._images

    def add(self, image_id: str, truth_hw: np.ndarray, prediction_hw: np.ndarray | None) -> None:
        """Count one image that has ground truth.

        Args:
            image_id: named in :attr:`Evaluation.missed` when ``prediction_hw`` is None.
            truth_hw: ``H x W`` class indices, the ignore value skipped.
            prediction_hw: ``H x W`` class indices (others count as unlabelled), or None when
                the image has no prediction: missed, every pixel of it wrong.

        Raises:
            ValueError: the prediction and the ground truth differ in size, or the ground
                truth holds values that are neither class indices nor the ignore value.
        """
        k = len(self.class_names)
        if prediction_hw is None:
            self._missed.append(image_id)
            prediction_hw = np.full(truth_hw.shape, k, np.int64)  # all in the unlabelled column
        elif prediction_hw.shape != truth_hw.shape:
            raise ValueError(
                f"{image_id}: the prediction is {prediction_hw.shape} but its ground truth "
                f"{truth_hw.shape}; the image and its ground truth differ in size."
            )
        self._confusion_kk1 += confusion_matrix(truth_hw, prediction_hw, k, self._ignore)
        self._images += 1

    def add_without_truth(self, image_id: str) -> None:
        """Name a predicted image that has no ground truth (it is not scored)."""
        self._without_truth.append(image_id)

    def result(self) -> Evaluation:
        return Evaluation(
            self.class_names,
            scores(self._confusion_kk1.copy()),
            self._images,
            tuple(self._missed),
            tuple(self._without_truth),
        )


def write_evaluation(
    storage: Storage,
    evaluation: Evaluation,
    *,
    files: tuple[str, str] = (EVALUATION, EVALUATION_TABLE),
    schema: str = "evaluation",
    context: Mapping[str, Any] | None = None,
    heading: str = "",
) -> dict[str, Any]:
    """Write the scores as JSON, checked against its schema, and as Markdown (each atomically).

    Args:
        storage: the folder written into.
        evaluation: the scores.
        files: the JSON and the Markdown file's names, relative to ``storage``.
        schema: the JSON's schema in ``schemas/`` (``benchmark`` extends ``evaluation``).
        context: fields written beside the scores (the benchmark's dataset, preset, ...).
        heading: Markdown above the scores' table.

    Returns:
        The JSON document written.
    """
    document = {**(context or {}), **evaluation.to_json()}
    schemas.validate(document, schema)
    storage.write_atomic(files[0], json.dumps(document, indent=1).encode())
    storage.write_atomic(files[1], evaluation.markdown(heading).encode())
    return document


class GroundTruth(Protocol):
    """Ground truth, claimed by the predictions image by image; the rest is missed."""

    def claim(self, image: dict[str, Any]) -> np.ndarray | None:
        """``H x W`` class indices of a predicted COCO image record, or None if it has none."""
        ...

    def unclaimed(self) -> Iterator[tuple[str, np.ndarray]]:
        """``(id, H x W class indices)`` of each ground-truth image no prediction claimed."""
        ...


def evaluate(predictions: str, ground_truth: str, values: str = "indices") -> Evaluation:
    """Score ``predictions`` (a run's output folder, or a COCO file) against ``ground_truth``.

    One confusion matrix over every ground-truth image (predictions read one shard file at a
    time); :data:`MISSED`.

    Raises:
        ValueError: no prediction has ground truth (ids that do not match), or a ground-truth
            file that cannot be read as one.
    """
    accumulator: ConfusionAccumulator | None = None
    truth: GroundTruth | None = None
    for coco in Predictions(predictions):
        predicted_maps = CocoLabelMaps(coco)
        if accumulator is None or truth is None:
            accumulator = ConfusionAccumulator([c["name"] for c in coco["categories"]])
            truth = ground_truth_of(ground_truth, predicted_maps.category_to_index, values)
        for image in coco["images"]:
            truth_hw = truth.claim(image)
            if truth_hw is None:
                accumulator.add_without_truth(str(image["image_id"]))
            else:
                accumulator.add(str(image["image_id"]), truth_hw, predicted_maps.label_map(image))
    if accumulator is None or truth is None or accumulator.images == 0:
        raise ValueError(
            f"No prediction in {predictions} has ground truth in {ground_truth}; check the image ids."
        )
    for image_id, truth_hw in truth.unclaimed():
        accumulator.add(image_id, truth_hw, None)
    return accumulator.result()


def ground_truth_of(location: str, index_of: dict[int, int], values: str) -> GroundTruth:
    """The ground truth at ``location`` (a COCO ``.json``, else a folder of PNG label maps).

    Args:
        index_of: category id -> class index, as the predictions number their classes.
        values: what PNG pixels hold: ``indices`` (class indices) or ``ids`` (category ids).
    """
    if location.endswith(".json"):
        return CocoGroundTruth(json.loads(read_bytes(location)), index_of)
    if values not in ("indices", "ids"):
        raise ValueError(f"values must be 'indices' or 'ids', got {values!r}.")
    return PngGroundTruth(location, index_of, values)


class PngGroundTruth:
    """Every PNG under a folder (see the module's docstring), claimed by its label file name."""

    def __init__(self, location: str, index_of: dict[int, int], values: str) -> None:
        self.location = location.rstrip("/")
        dtype, self._ignore = label_format(len(index_of))
        self._lookup = np.full(self._ignore + 1, self._ignore, dtype)  # file value -> index
        for category_id, index in index_of.items():
            if values == "ids" and 0 <= category_id < self._ignore:
                self._lookup[category_id] = index
        if values == "indices":
            self._lookup[: len(index_of)] = np.arange(len(index_of), dtype=dtype)
        self._files = set(_png_files(self.location))
        self._claimed: set[str] = set()

    def claim(self, image: dict[str, Any]) -> np.ndarray | None:
        name = label_file_name(image["image_id"])
        if name not in self._files:
            return None
        self._claimed.add(name)
        return self._read(name)

    def unclaimed(self) -> Iterator[tuple[str, np.ndarray]]:
        for name in sorted(self._files - self._claimed):
            yield name.removesuffix(".png"), self._read(name)

    def _read(self, name: str) -> np.ndarray:
        file = f"{self.location}/{name}"
        raw = np.asarray(Image.open(io.BytesIO(read_bytes(file))))
        if raw.ndim != 2:
            raise ValueError(f"{file} is not a single-channel label map (shape {raw.shape}).")
        return self._lookup[np.minimum(raw, self._ignore)]


class CocoGroundTruth:
    """The images of a COCO file, claimed by id, file name, or file-name stem."""

    def __init__(self, gt: dict[str, Any], index_of: dict[int, int]) -> None:
        self._images = gt["images"]
        self._by_key: dict[str, dict[str, Any]] = {}
        for image in self._images:
            self._by_key[str(image["id"])] = image
            name = PurePosixPath(image.get("file_name", ""))
            self._by_key.setdefault(str(name), image)  # ids of a manifest made from this file
            self._by_key.setdefault(str(name.with_suffix("")), image)  # "a/img_7.jpg" -> "a/img_7"
            self._by_key.setdefault(name.stem, image)  # -> "img_7"
        self._maps = CocoLabelMaps(gt, index_of)
        self._claimed: set[Any] = set()

    def claim(self, image: dict[str, Any]) -> np.ndarray | None:
        gt_image = self._by_key.get(str(image["image_id"]))
        if gt_image is None:
            return None
        self._claimed.add(gt_image["id"])
        return self._maps.label_map(gt_image)

    def unclaimed(self) -> Iterator[tuple[str, np.ndarray]]:
        for gt_image in self._images:
            if gt_image["id"] not in self._claimed:
                name = gt_image.get("file_name") or gt_image["id"]
                yield str(name), self._maps.label_map(gt_image)


def _png_files(folder: str) -> list[str]:
    """Paths of the ``.png`` files under ``folder`` (recursively, ``/``-separated, relative),
    sorted; hidden files and writers' temporaries left out; none if the folder is missing."""
    fs, base = resolve(folder)
    base = base.rstrip("/")
    selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
    relative = (
        info.path[len(base) + 1 :]
        for info in fs.get_file_info(selector)
        if info.type == pafs.FileType.File
    )
    return sorted(
        path
        for path in relative
        if path.endswith(".png") and not any(p.startswith(".") for p in path.split("/"))
    )
