"""A run's figures for its report, aggregated with memory bounded whatever the run's size.

What is read, and why that way:

* counts per shard come from :func:`pipeline.formats.progress.read_progress` (the ledger, a
  few requests however many shards, reconciled with the markers: a shard the ledger does not
  yet call ``done`` is counted from its marker). Only shards with a marker count: their files
  are complete, so the figures below all describe the same images;
* failure examples come from the markers of shards with failures, read in order until every
  error type has its few examples;
* per class and per image: the ``summary/`` Parquet dataset, one shard file at a time and only
  the columns needed; per class pixel counts: the ``category_id`` and ``area`` columns of the
  ``annotations/`` dataset (RLE ``counts`` are never read here);
* the review queue is a heap of at most ``review`` images: memory holds one shard's summary
  rows and the queue, never the run.
"""

from __future__ import annotations

import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gclip.vocabulary import parse_json
from pipeline.formats.coco import categories
from pipeline.formats.layout import annotation_table_path, summary_table_path
from pipeline.formats.progress import read_progress
from pipeline.formats.run_record import RunRecord, require_run
from pipeline.formats.shard_files import read_marker
from pipeline.formats.storage import Storage, resolve

ImageId = str | int
_READ_AHEAD = 8  # shard files in flight while one is aggregated


@dataclass(frozen=True, slots=True)
class Totals:
    """The run's counts over its finished shards (those whose marker is in place).

    Attributes:
        shards_planned: shards in the plan (the ledger's entries).
        images_without_labels: labelled images with no summary row: no pixel of theirs was
            given a class (every pixel under its threshold), so they have no mean confidence.
    """

    shards_planned: int
    shards_done: int
    images_labelled: int
    images_failed: int
    annotations: int
    images_without_labels: int


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed image, as its shard's marker records it; ``error`` is the exception class."""

    image_id: ImageId
    uri: str
    error: str
    message: str


@dataclass(frozen=True, slots=True)
class ClassFigures:
    """One class of the vocabulary over the run.

    Attributes:
        category: the COCO category record (``id``, ``name``, ``color``, ``supercategory``).
        images: labelled images in which the class covers at least one pixel.
        image_share: ``images / images_labelled`` in [0, 1].
        pixels: pixels labelled with the class (the sum of its annotations' ``area``).
        pixel_share: ``pixels`` over all labelled pixels (unlabelled pixels not counted).
        confidence_bins: histogram of the class's per-image mean confidences (``summary/``'s
            ``mean_confidence``), ``len`` equal bins over [0, 1], the last one closed.
    """

    category: dict[str, Any]
    images: int
    image_share: float
    pixels: int
    pixel_share: float
    confidence_bins: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReviewCandidate:
    """An image of the review queue.

    Attributes:
        mean_confidence: ``sum(pixel_fraction * mean_confidence) / sum(pixel_fraction)`` over the
            image's classes: the mean confidence of its labelled pixels.
        shard: the shard whose files hold the image.
    """

    image_id: ImageId
    shard: int
    mean_confidence: float


@dataclass(frozen=True, slots=True)
class ReportData:
    """Everything the report shows but the pictures.

    Attributes:
        run: ``run.json`` as written (state, settings, timings).
        categories: the COCO category records, in vocabulary order (label value = position).
        classes: every class of the vocabulary, by pixel share, largest first.
        review: the lowest-confidence images, lowest first (ties: earliest shard and row).
    """

    output: str
    run: RunRecord
    totals: Totals
    failures_by_error: dict[str, int]
    failure_examples: tuple[Failure, ...]
    categories: tuple[dict[str, Any], ...]
    classes: tuple[ClassFigures, ...]
    review: tuple[ReviewCandidate, ...]


def gather(output: str, review: int = 24, examples: int = 3, bins: int = 10) -> ReportData:
    """Aggregate a run's figures.

    Args:
        output: a run's output folder (local, ``file://`` or ``s3://``).
        review: size of the review queue.
        examples: failure examples kept per error type.
        bins: bins of the confidence histograms.

    Raises:
        InputError: ``output`` holds no ``run.json``.
    """
    storage = Storage(output, create=False)
    run = require_run(storage)
    cats = tuple(categories(parse_json(run["vocabulary"])))
    progress = read_progress(storage)
    done = progress.done_shards
    per_shard = progress.counts_by_shard()
    by_error: Counter[str] = Counter()
    for counts in per_shard.values():
        by_error.update(counts["failures_by_error"])
    failing = [s for s in done if per_shard[s]["images_failed"]]
    labelled = sum(c["images_done"] for c in per_shard.values())
    fs, base = resolve(output)
    positions = _Positions.of(cats)
    summary = _summarise(fs, base, done, positions, review, bins)
    pixels = _pixels_per_class(fs, base, done, positions)
    classes = _class_figures(cats, summary, pixels, labelled)
    totals = Totals(
        shards_planned=max(len(progress.entries), len(done)),
        shards_done=len(done),
        images_labelled=labelled,
        images_failed=sum(c["images_failed"] for c in per_shard.values()),
        annotations=sum(c["annotations"] for c in per_shard.values()),
        images_without_labels=labelled - summary.images,
    )
    return ReportData(
        output=output,
        run=run,
        totals=totals,
        failures_by_error=dict(sorted(by_error.items(), key=lambda kv: (-kv[1], kv[0]))),
        failure_examples=_failure_examples(storage, failing, by_error, examples),
        categories=cats,
        classes=classes,
        review=summary.review,
    )


def _failure_examples(
    storage: Storage, failing: list[int], by_error: Counter[str], per_error: int
) -> tuple[Failure, ...]:
    """Up to ``per_error`` failures of each error type, in shard order; stops reading markers
    as soon as every type has its examples."""
    wanted = {error: min(n, per_error) for error, n in by_error.items()}
    found: list[Failure] = []
    kept: Counter[str] = Counter()
    for shard in failing:
        if all(kept[e] >= n for e, n in wanted.items()):
            break
        for record in read_marker(storage, shard).failures:
            if kept[record["error"]] < per_error:
                kept[record["error"]] += 1
                found.append(
                    Failure(record["image_id"], record["uri"], record["error"], record["message"])
                )
    return tuple(sorted(found, key=lambda f: (-by_error[f.error], f.error)))


@dataclass(frozen=True, slots=True)
class _Summary:
    """What one pass over ``summary/`` gives: per class image counts and confidence
    histograms (``C`` and ``C x bins`` int64), images with a summary row, the review queue."""

    images_per_class: np.ndarray
    histograms: np.ndarray
    images: int
    review: tuple[ReviewCandidate, ...]


def _summarise(
    fs: Any, base: str, done: list[int], positions: _Positions, review: int, bins: int
) -> _Summary:
    """One pass over the finished shards' summary files, a shard at a time."""
    classes = len(positions)
    images_per_class = np.zeros(classes, np.int64)
    histograms = np.zeros((classes, bins), np.int64)
    images = 0
    # A max-heap (keys negated) of the ``review`` lowest (confidence, shard, row) seen so far.
    heap: list[tuple[float, int, int, ImageId]] = []
    columns = ["image_id", "category_id", "pixel_fraction", "mean_confidence"]
    for shard, table in _tables(fs, base, done, summary_table_path, columns):
        index = positions(table["category_id"])
        confidence = table["mean_confidence"].to_numpy()
        images_per_class += np.bincount(index, minlength=classes)
        bin_ = np.clip((confidence * bins).astype(np.int64), 0, bins - 1)
        histograms += np.bincount(index * bins + bin_, minlength=classes * bins).reshape(
            classes, bins
        )
        ids, means = per_image_confidence(table)
        images += len(means)
        # Only the shard's own ``review`` lowest can enter the queue (ties: earlier row first).
        for row in np.lexsort((np.arange(len(means)), means))[:review].tolist():
            key = (-float(means[row]), -shard, -row, ids[row].as_py())
            if len(heap) < review:
                heapq.heappush(heap, key)
            elif key > heap[0]:
                heapq.heapreplace(heap, key)
    queue = sorted(heap, reverse=True)
    return _Summary(
        images_per_class,
        histograms,
        images,
        tuple(ReviewCandidate(i, -shard, -mean) for mean, shard, _, i in queue),
    )


def per_image_confidence(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """Per image of one shard, in row order: its id and the pixel-weighted mean confidence of
    its labelled pixels (float64)."""
    weighted = pa.table(
        {
            "image_id": table["image_id"],
            "weighted": pc.multiply(table["pixel_fraction"], table["mean_confidence"]),
            "fraction": table["pixel_fraction"],
        }
    )
    # Without threads, groups come out in order of first appearance: the manifest's order.
    grouped = weighted.group_by("image_id", use_threads=False).aggregate(
        [("weighted", "sum"), ("fraction", "sum")]
    )
    # Summary rows exist only for classes covering pixels, so every fraction sum is > 0.
    means = grouped["weighted_sum"].to_numpy() / grouped["fraction_sum"].to_numpy()
    return grouped["image_id"].combine_chunks(), means


def _pixels_per_class(fs: Any, base: str, done: list[int], positions: _Positions) -> np.ndarray:
    """``C`` int64: labelled pixels per class, summed from the annotations' ``area``."""
    pixels = np.zeros(len(positions), np.int64)
    for _, table in _tables(fs, base, done, annotation_table_path, ["category_id", "area"]):
        index = positions(table["category_id"])
        np.add.at(pixels, index, table["area"].to_numpy())
    return pixels


def _class_figures(
    cats: tuple[dict[str, Any], ...], summary: _Summary, pixels: np.ndarray, labelled: int
) -> tuple[ClassFigures, ...]:
    total = int(pixels.sum())
    figures = [
        ClassFigures(
            category=category,
            images=int(summary.images_per_class[i]),
            image_share=int(summary.images_per_class[i]) / labelled if labelled else 0.0,
            pixels=int(pixels[i]),
            pixel_share=int(pixels[i]) / total if total else 0.0,
            confidence_bins=tuple(int(n) for n in summary.histograms[i]),
        )
        for i, category in enumerate(cats)
    ]
    # Stable sort: classes of equal share (e.g. never predicted) keep the vocabulary's order.
    return tuple(sorted(figures, key=lambda f: -f.pixels))


def _tables(
    fs: Any, base: str, done: list[int], path_of: Callable[[int], str], columns: list[str]
) -> Iterator[tuple[int, pa.Table]]:
    """``(shard, table)`` for each finished shard's file of a dataset, in shard order, only
    ``columns`` read.

    A file at a time, a few fetched ahead on threads (object stores answer in tens of ms): a
    ``pyarrow.dataset`` over every file would keep each file's metadata, about 17 KB a shard.
    """

    def read(shard: int) -> pa.Table:
        return pq.read_table(f"{base}/{path_of(shard)}", filesystem=fs, columns=columns)

    with ThreadPoolExecutor(max_workers=_READ_AHEAD) as pool:
        ahead: deque[tuple[int, Future[pa.Table]]] = deque()
        for shard in done:
            ahead.append((shard, pool.submit(read, shard)))
            if len(ahead) == _READ_AHEAD:
                first, table = ahead.popleft()
                yield first, table.result()
        while ahead:
            first, table = ahead.popleft()
            yield first, table.result()


@dataclass(frozen=True, slots=True)
class _Positions:
    """Category id -> position in the vocabulary, for whole columns at once.

    Attributes:
        ids: ``C`` int64, the vocabulary's category ids sorted.
        order: ``C`` int64, the vocabulary position of each of ``ids``.
    """

    ids: np.ndarray
    order: np.ndarray

    @classmethod
    def of(cls, cats: tuple[dict[str, Any], ...]) -> _Positions:
        ids = np.array([c["id"] for c in cats], np.int64)
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], order)

    def __len__(self) -> int:
        return len(self.ids)

    def __call__(self, category_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """``N`` int64 positions of ``N`` category ids."""
        values = np.asarray(category_ids.to_numpy(), np.int64)
        found = np.clip(np.searchsorted(self.ids, values), 0, len(self.ids) - 1)
        if values.size and not np.array_equal(self.ids[found], values):
            unknown = sorted(set(values.tolist()) - set(self.ids.tolist()))[:5]
            raise ValueError(
                f"category ids {unknown} of the run's files are not in its run.json vocabulary: "
                "the folder mixes runs; relabel it into a fresh output folder."
            )
        return np.asarray(self.order[found], np.int64)
