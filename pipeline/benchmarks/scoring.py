"""Scoring a benchmark run: one confusion matrix over the whole split, from the label maps the
job wrote, and ``benchmark.json`` / ``benchmark.md`` beside them.

As mmsegmentation's ``IoUMetric``: ground-truth pixels at the ignore index (255) are skipped;
IoU per class is summed intersection over summed union; mIoU is the mean over classes whose
union is not empty. An image the job failed on counts as wholly missed, not as absent.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

import schemas
from gclip.metrics import SegmentationScores, confusion_matrix, scores
from pipeline.benchmarks.datasets import Sample
from pipeline.benchmarks.presets import Preset
from pipeline.formats.layout import label_path
from pipeline.formats.storage import Storage

IGNORE = 255
BENCHMARK, BENCHMARK_TABLE = "benchmark.json", "benchmark.md"


@dataclass(frozen=True, slots=True)
class SplitScores:
    """Scores of a split, with the class names they refer to.

    Attributes:
        class_names: the benchmark's classes, in label order.
        scores: from the split's confusion matrix.
        images: images scored.
        unlabelled: ids of images the run has no label map for (counted as missed).
    """

    class_names: tuple[str, ...]
    scores: SegmentationScores
    images: int
    unlabelled: tuple[str, ...]


def score_split(
    output: str,
    samples: Sequence[Sample],
    truth: Callable[[str], np.ndarray],
    class_names: Sequence[str],
) -> SplitScores:
    """Score the label maps a run wrote into ``output/labels/`` against the split's truth.

    Args:
        output: the run's output folder.
        samples: the split, as listed for the run.
        truth: a ground-truth file -> ``H x W`` uint8 class indices, 255 ignored.
        class_names: the benchmark's classes; label maps hold their indices.
    """
    storage = Storage(output, create=False)
    k = len(class_names)
    confusion = np.zeros((k, k + 1), np.int64)  # rows truth, columns prediction + unlabelled
    unlabelled = []
    for sample in tqdm(samples, desc="scoring", unit="img", dynamic_ncols=True):
        truth_hw = truth(sample.truth)
        try:
            data = storage.read(label_path(sample.image_id))
        except FileNotFoundError:
            unlabelled.append(sample.image_id)
            prediction_hw = np.full(truth_hw.shape, IGNORE, np.uint8)
        else:
            prediction_hw = np.asarray(Image.open(io.BytesIO(data)))
        if prediction_hw.shape != truth_hw.shape:
            raise ValueError(
                f"{sample.image_id}: label map {prediction_hw.shape} but ground truth "
                f"{truth_hw.shape} ({sample.truth}); the image and its ground truth differ in size."
            )
        confusion += confusion_matrix(truth_hw, prediction_hw, k, IGNORE)
    return SplitScores(tuple(class_names), scores(confusion), len(samples), tuple(unlabelled))


def benchmark_record(
    split: SplitScores,
    preset: Preset,
    run: dict[str, Any],
    published: list[dict[str, Any]],
    limit: int | None,
) -> dict[str, Any]:
    """``benchmark.json``: scores as fractions, the preset, the run's settings, published mIoU."""
    s = split.scores
    record = {
        "dataset": preset.dataset,
        "protocol": preset.protocol,
        "preset": {k: v for k, v in preset.to_json().items() if k != "names"},
        "class_names": preset.names.splitlines(),
        "method": run["config"]["method"]["name"],
        "model": run["config"]["model"],
        "pretrained": run["config"]["pretrained"],
        "inference": run["config"]["inference"],
        "images": split.images,
        "limit": limit,
        "images_unlabelled": list(split.unlabelled),
        "miou": s.miou,
        "pixel_accuracy": s.pixel_accuracy,
        "iou": {
            name: None if np.isnan(v) else float(v)
            for name, v in zip(split.class_names, s.iou, strict=True)
        },
        "confusion": s.confusion.tolist(),
        "published": published,
    }
    schemas.validate(record, "benchmark")
    return record


def markdown(record: dict[str, Any]) -> str:
    """``benchmark.md``: the headline beside the published numbers, then per-class IoU."""
    subset = f" (first {record['limit']} images)" if record["limit"] else ""
    lines = [
        f"# {record['dataset']}: {record['method']} under the {record['protocol']} protocol",
        "",
        f"{record['images']} images{subset}; model {record['model']}, weights "
        f"{record['pretrained']}.",
        "",
        "| | mIoU (%) | pixel accuracy (%) |",
        "|---|---|---|",
        f"| **this run** | **{100 * record['miou']:.2f}** | {100 * record['pixel_accuracy']:.2f} |",
    ]
    lines += [f"| {p['source']} | {p['miou_percent']:.2f} | |" for p in record["published"]]
    lines += ["", "| class | IoU (%) |", "|---|---|"]
    for name, value in record["iou"].items():
        lines.append(f"| {name} | {'n/a' if value is None else f'{100 * value:.2f}'} |")
    return "\n".join(lines) + "\n"


def write_results(output: str, record: dict[str, Any]) -> None:
    storage = Storage(output, create=False)
    storage.write_atomic(BENCHMARK, json.dumps(record, indent=2).encode())
    storage.write_atomic(BENCHMARK_TABLE, markdown(record).encode())
