"""What a comparison shows of each variant: class coverage, confidence, and scores on the
sample's ground truth.

Coverage and confidence are read as ``jobs.report`` reads a run
(:func:`pipeline.reading.report_data.gather`); scores are :func:`jobs.evaluate`'s own
(:func:`pipeline.reading.evaluation.evaluate`) against the sample's ground truth, written once
as ``DIR/ground_truth/`` so that ``python -m jobs.evaluate --predictions DIR/variants/NAME
--ground-truth DIR/ground_truth`` gives the same numbers.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from gclip.vocabulary import label_format
from pipeline.errors import InputError
from pipeline.formats.layout import label_file_name
from pipeline.formats.storage import Storage
from pipeline.reading.evaluation import Evaluation, evaluate, ground_truth_of, write_evaluation
from pipeline.reading.predictions import Predictions
from pipeline.reading.report_data import gather

SAMPLE_TRUTH = "ground_truth"  # DIR/ground_truth/: the sample's ground truth, class indices


@dataclass(frozen=True, slots=True)
class VariantFigures:
    """One variant's figures over the sample.

    Attributes:
        images_labelled, images_failed: the run's counts.
        classes: classes in the variant's vocabulary.
        classes_covered: names of the classes covering at least one pixel, largest first.
        labelled_share: labelled pixels over all pixels of the labelled images, in [0, 1].
        mean_confidence: the mean over images of each image's mean confidence (that of its
            labelled pixels, as the report's review queue ranks them); ``None`` when no
            pixel is labelled.
        image_confidence: each image's mean confidence, by ``str(image_id)`` (images without
            a labelled pixel left out).
        evaluation: the scores against the sample's ground truth, when given.
    """

    images_labelled: int
    images_failed: int
    classes: int
    classes_covered: tuple[str, ...]
    labelled_share: float
    mean_confidence: float | None
    image_confidence: Mapping[str, float]
    evaluation: Evaluation | None = None

    def to_json(self) -> dict[str, Any]:
        """``schemas/compare.schema.json#/$defs/figures``."""
        return {
            "images_labelled": self.images_labelled,
            "images_failed": self.images_failed,
            "classes": self.classes,
            "classes_covered": list(self.classes_covered),
            "labelled_share": self.labelled_share,
            "mean_confidence": self.mean_confidence,
            "miou": self.evaluation.scores.miou if self.evaluation else None,
            "pixel_accuracy": self.evaluation.scores.pixel_accuracy if self.evaluation else None,
        }


def variant_figures(output: str, images: int) -> VariantFigures:
    """The figures of a finished variant's output folder (``images``: the sample's size)."""
    data = gather(output, review=images)
    pixels = sum(image["height"] * image["width"] for image in _coco_images(output))
    labelled = sum(c.pixels for c in data.classes)
    confidence = {str(c.image_id): c.mean_confidence for c in data.review}
    return VariantFigures(
        images_labelled=data.totals.images_labelled,
        images_failed=data.totals.images_failed,
        classes=len(data.categories),
        classes_covered=tuple(c.category["name"] for c in data.classes if c.pixels),
        labelled_share=labelled / pixels if pixels else 0.0,
        mean_confidence=float(np.mean(list(confidence.values()))) if confidence else None,
        image_confidence=confidence,
    )


def _coco_images(output: str) -> Iterable[dict[str, Any]]:
    for coco in Predictions(output):
        yield from coco["images"]


def write_sample_truth(
    storage: Storage,
    ground_truth: str,
    values: str,
    categories: Sequence[dict[str, Any]],
    image_ids: Sequence[Any],
) -> str:
    """Write the sample's images' ground truth as PNG maps of class indices (255 or 65535
    ignored) under ``SAMPLE_TRUTH/``, read by ``jobs.evaluate``'s own readers; return its
    location. An image without ground truth gets no file (it is then not scored).

    Args:
        ground_truth, values: as ``jobs.evaluate --ground-truth --values`` take them.
        categories: the variants' COCO categories, in class-index order.

    Raises:
        InputError: no image of the sample has ground truth there, or it cannot be read.
    """
    index_of = {c["id"]: i for i, c in enumerate(categories)}
    dtype, _ = label_format(len(categories))
    written = 0
    try:
        truth = ground_truth_of(ground_truth, index_of, values)
        for image_id in image_ids:
            labels_hw = truth.claim({"image_id": image_id})
            if labels_hw is not None:
                buffer = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(labels_hw, dtype)).save(buffer, "PNG")
                storage.write_atomic(
                    f"{SAMPLE_TRUTH}/{label_file_name(image_id)}", buffer.getvalue()
                )
                written += 1
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"--ground-truth {ground_truth}: {err}") from err
    if not written:
        raise InputError(
            f"--ground-truth {ground_truth} has none of the sample's images "
            f"({', '.join(map(str, image_ids[:5]))}...); check that its ids are the manifest's."
        )
    return storage.uri(SAMPLE_TRUTH)


def score(output: str, sample_truth: str) -> Evaluation:
    """``jobs.evaluate --predictions output --ground-truth sample_truth``: scored and written
    into the variant's folder (``evaluation.json``, ``evaluation.md``) as that command does."""
    evaluation = evaluate(output, sample_truth, "indices")
    write_evaluation(Storage(output, create=False), evaluation)
    return evaluation
