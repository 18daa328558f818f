"""Scoring a benchmark run: the split's ground truth against the label maps the job wrote, and
``benchmark.json`` / ``benchmark.md`` beside them.

Scored as ``jobs.evaluate`` scores (:mod:`pipeline.reading.evaluation`, mmsegmentation's
``IoUMetric``), the split being the ground truth: an image the job wrote no label map for (it
failed on it) is missed, its pixels counted as wrong rather than left out.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.formats.layout import label_path
from pipeline.formats.storage import Storage
from pipeline.reading.evaluation import ConfusionAccumulator, Evaluation, write_evaluation
from pipeline.reproduction.datasets import Sample
from pipeline.reproduction.presets import Preset

BENCHMARK, BENCHMARK_TABLE = "benchmark.json", "benchmark.md"


def score_split(
    output: str,
    samples: Sequence[Sample],
    truth: Callable[[str], np.ndarray],
    class_names: Sequence[str],
) -> Evaluation:
    """Score the label maps a run wrote into ``output/labels/`` against the split's truth.

    Args:
        output: the run's output folder.
        samples: the split, as listed for the run: every one has ground truth.
        truth: a ground-truth file -> ``H x W`` uint8 class indices, 255 ignored.
        class_names: the benchmark's classes (at most 255, so 255 is the ignore value); label
            maps hold their indices.
    """
    storage = Storage(output, create=False)
    accumulator = ConfusionAccumulator(class_names)
    for sample in tqdm(samples, desc="scoring", unit="img", dynamic_ncols=True):
        accumulator.add(sample.image_id, truth(sample.truth), _label_map(storage, sample.image_id))
    return accumulator.result()


def benchmark_context(
    preset: Preset, config: Mapping[str, Any], published: list[dict[str, Any]], limit: int | None
) -> dict[str, Any]:
    """``benchmark.json``'s fields beside the scores: the preset, the run's settings (``config``
    as ``run.json`` records it), the published mIoU (percent)."""
    return {
        "dataset": preset.dataset,
        "protocol": preset.protocol,
        "preset": {k: v for k, v in preset.to_json().items() if k != "names"},
        "class_names": preset.names.splitlines(),
        "method": config["method"]["name"],
        "model": config["model"],
        "pretrained": config["pretrained"],
        "inference": config["inference"],
        "limit": limit,
        "published": published,
    }


def heading(context: dict[str, Any], scores: Evaluation) -> str:
    """``benchmark.md`` above the scores' table: the run, and its mIoU beside the published."""
    subset = f" (the split's first {context['limit']})" if context["limit"] else ""
    s = scores.scores
    lines = [
        f"# {context['dataset']}: {context['method']} under the {context['protocol']} protocol",
        "",
        f"{scores.images} images{subset}; model {context['model']}, weights "
        f"{context['pretrained']}.",
        "",
        "| | mIoU (%) | pixel accuracy (%) |",
        "|---|---|---|",
        f"| **this run** | **{100 * s.miou:.2f}** | {100 * s.pixel_accuracy:.2f} |",
    ]
    lines += [f"| {p['source']} | {p['miou_percent']:.2f} | |" for p in context["published"]]
    return "\n".join(lines) + "\n\n"


def write_results(
    output: str, scores: Evaluation, context: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    """Write ``benchmark.json`` (``schemas/benchmark.schema.json``) and ``benchmark.md``.

    Returns:
        The JSON document and the Markdown written.
    """
    top = heading(context, scores)
    record = write_evaluation(
        Storage(output, create=False),
        scores,
        files=(BENCHMARK, BENCHMARK_TABLE),
        schema="benchmark",
        context=context,
        heading=top,
    )
    return record, scores.markdown(top)


def _label_map(storage: Storage, image_id: str) -> np.ndarray | None:
    """The label map the job wrote for ``image_id``, or None if it wrote none."""
    try:
        data = storage.read(label_path(image_id))
    except FileNotFoundError:
        return None
    return np.asarray(Image.open(io.BytesIO(data)))
