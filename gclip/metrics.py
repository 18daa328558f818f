"""Segmentation metrics from a confusion matrix: per-class IoU, mIoU, pixel accuracy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class SegmentationScores:
    """Scores over K classes.

    Attributes:
        confusion: ``K x (K + 1)`` int64; rows ground truth, columns prediction, the last
            column counting pixels predicted unlabelled (a miss for their true class).
        iou: ``K`` per-class IoU; NaN for classes absent from both truth and prediction.
        miou: mean of the defined IoUs.
        pixel_accuracy: correct / ground-truth pixels that are not ignored.
    """

    confusion: np.ndarray
    iou: np.ndarray
    miou: float
    pixel_accuracy: float


def confusion_matrix(
    truth: np.ndarray, prediction: np.ndarray, num_classes: int, ignore: int = 255
) -> np.ndarray:
    """``K x (K + 1)`` counts of (truth, prediction); truth ``ignore`` pixels are skipped and
    predictions outside ``[0, K)`` land in the last (unlabelled) column."""
    if truth.shape != prediction.shape:
        raise ValueError(
            f"Ground truth {truth.shape} and prediction {prediction.shape} differ in size."
        )
    keep = truth != ignore
    t = truth[keep].astype(np.int64)
    p = prediction[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(
            f"Ground truth holds labels outside [0, {num_classes}) other than {ignore}."
        )
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    counts = np.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1)


def scores(confusion: np.ndarray) -> SegmentationScores:
    """IoU per class, mIoU over defined classes, and pixel accuracy from a confusion matrix."""
    k = confusion.shape[0]
    tp = np.diag(confusion[:, :k]).astype(np.float64)
    union = confusion.sum(axis=1) + confusion[:, :k].sum(axis=0) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    total = confusion.sum()
    return SegmentationScores(
        confusion=confusion,
        iou=iou,
        miou=float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
    )
