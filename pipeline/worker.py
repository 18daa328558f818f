"""Labelling one shard: decode, segment, encode, write. Knows nothing about Ray.

``process_shard`` is a plain function of a segmenter and a shard; the Ray actor in
:mod:`pipeline.executors` is a thin shell that builds the segmenter once and calls it.
The shard file is written last and atomically: its presence means the shard is done, and a
rerun writes the same bytes to the same path.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from PIL import Image

from gclip import InferenceConfig, Segmentation, Vocabulary
from pipeline import images as image_io
from pipeline.coco import encode_annotations
from pipeline.manifest import ImageRecord, Shard, shard_name
from pipeline.storage import Storage

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class SegmenterLike(Protocol):
    """What the pipeline needs of a segmenter (``gclip.Segmenter``, or a fake in tests)."""

    def segment(
        self, images: Sequence[Any], vocabulary: Vocabulary, config: InferenceConfig | None = None
    ) -> list[Segmentation]: ...


@dataclass(frozen=True, slots=True)
class ShardSettings:
    """What a worker needs to label shards, besides the segmenter."""

    vocabulary: Vocabulary
    inference: InferenceConfig
    fingerprint: str
    images_per_call: int = 8
    decode_threads: int = 4
    png_labels: bool = False


@dataclass(frozen=True, slots=True)
class ShardResult:
    """Counts reported back to the coordinator."""

    shard: int
    images_done: int
    images_failed: int
    seconds: float


def shard_path(shard_index: int) -> str:
    return f"shards/{shard_name(shard_index)}.json"


def label_file_name(image_id: str | int) -> str:
    """A file name for an image's PNG: the id itself when safe, else ``_`` + a hash of it."""
    text = str(image_id)
    if _SAFE_NAME.match(text):  # starts alphanumeric: never ".", ".." or a hidden file
        return f"{text}.png"
    return f"_{hashlib.sha256(text.encode()).hexdigest()[:24]}.png"


def process_shard(
    segmenter: SegmenterLike, shard: Shard, settings: ShardSettings, storage: Storage
) -> ShardResult:
    """Label every image of ``shard`` and write ``shards/shard-NNNNNN.json`` atomically.

    Bad images become failure records; an error that fails every image is raised (a bug, or a
    broken model), so the coordinator fails the shard with its traceback.
    """
    start = time.perf_counter()
    images_out: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    segmented = 0
    model_errors: list[Exception] = []
    for chunk in _chunks(
        _decoded(shard.records, settings.decode_threads), settings.images_per_call
    ):
        good = [(rec, img) for rec, img in chunk if isinstance(img, np.ndarray)]
        segmented += len(good)
        failures += [img.to_json() for _, img in chunk if isinstance(img, image_io.ImageFailure)]
        for rec, img, seg in _segment(segmenter, good, settings, failures, model_errors):
            image_record = {
                "id": rec.index,
                "image_id": rec.image_id,
                "file_name": rec.uri,
                "height": int(img.shape[0]),
                "width": int(img.shape[1]),
            }
            if settings.png_labels:
                label_file = f"labels/{label_file_name(rec.image_id)}"
                storage.write_atomic(label_file, _png(seg.labels_hw, settings.vocabulary))
                image_record["label_file"] = label_file
            images_out.append(image_record)
            image_annotations = encode_annotations(
                seg.labels_hw, seg.confidence_hw, settings.vocabulary, rec.index
            )
            annotations += image_annotations
            summary += _summary_rows(
                rec, image_annotations, seg.labels_hw.size, settings.vocabulary
            )
    if segmented and not images_out:
        # Every decodable image failed inside the model: that is a bug or a broken model, not
        # bad input, so the shard fails (with a traceback) instead of recording N failures.
        error = RuntimeError(f"every image of {shard.name} failed in segmentation")
        raise error from model_errors[-1]
    payload = {
        "shard": shard.index,
        "fingerprint": settings.fingerprint,
        "images": images_out,
        "annotations": annotations,
        "failures": failures,
        "summary": summary,
    }
    storage.write_atomic(
        shard_path(shard.index), json.dumps(payload, separators=(",", ":")).encode()
    )
    return ShardResult(shard.index, len(images_out), len(failures), time.perf_counter() - start)


def _segment(
    segmenter: SegmenterLike,
    good: list[tuple[ImageRecord, np.ndarray]],
    settings: ShardSettings,
    failures: list[dict[str, Any]],
    errors: list[Exception],
) -> Iterator[tuple[ImageRecord, np.ndarray, Segmentation]]:
    """Segment a chunk together; if that fails, image by image so one bad image is isolated."""
    if not good:
        return
    try:
        results = segmenter.segment(
            [img for _, img in good], settings.vocabulary, settings.inference
        )
        yield from ((rec, img, seg) for (rec, img), seg in zip(good, results, strict=True))
        return
    except Exception:
        log.warning(
            "a chunk of %d images failed; retrying them one by one", len(good), exc_info=True
        )
    for rec, img in good:
        try:
            [seg] = segmenter.segment([img], settings.vocabulary, settings.inference)
        except Exception as err:  # per-image boundary
            errors.append(err)
            failures.append(
                image_io.ImageFailure(rec.image_id, rec.uri, type(err).__name__, str(err)).to_json()
            )
            continue
        yield rec, img, seg


def _decoded(
    records: Sequence[ImageRecord], threads: int
) -> Iterator[tuple[ImageRecord, np.ndarray | image_io.ImageFailure]]:
    """Decode on a thread pool, at most ``2 * threads`` images ahead of the consumer."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: list[tuple[ImageRecord, Future[np.ndarray | image_io.ImageFailure]]] = []
        queue = iter(records)
        for rec in queue:
            pending.append((rec, pool.submit(image_io.load, rec)))
            if len(pending) >= 2 * threads:
                break
        while pending:
            rec, future = pending.pop(0)
            nxt = next(queue, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(image_io.load, nxt)))
            yield rec, future.result()


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _summary_rows(
    rec: ImageRecord, annotations: list[dict[str, Any]], pixels: int, vocabulary: Vocabulary
) -> list[dict[str, Any]]:
    """Per image and predicted class: pixel fraction and mean confidence (for curation).

    Read off the image's annotations: ``area`` is the class's pixel count and ``score`` its mean
    confidence, so the label map is not scanned again.
    """
    names = {c.id: c.name for c in vocabulary.classes}
    return [
        {
            "image_id": str(rec.image_id),
            "category_id": ann["category_id"],
            "category": names[ann["category_id"]],
            "pixel_fraction": ann["area"] / pixels,
            "mean_confidence": ann["score"],
        }
        for ann in annotations
    ]


def _png(labels_hw: np.ndarray, vocabulary: Vocabulary) -> bytes:
    """An indexed (mode P) PNG: pixel value = class index, 255 = unlabelled; the palette holds
    the class colours so viewers show colours while trainers read the indices."""
    height, width = labels_hw.shape
    image = Image.frombytes(
        "P", (width, height), np.ascontiguousarray(labels_hw, dtype=np.uint8).tobytes()
    )
    palette = [0] * (256 * 3)
    for index, color in enumerate(vocabulary.colors()):
        palette[3 * index : 3 * index + 3] = color
    image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
