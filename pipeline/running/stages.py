"""The three stages of one shard: read its rows and decode, segment, encode and write.
Knows nothing about Ray.

``process_shard`` is a plain function of a segmenter and a shard task; the model worker
(:class:`pipeline.running.worker.LabelWorker`) is a thin shell that builds the segmenter once
and calls it.
The worker reads its own rows from the manifest (the task holds a descriptor) and writes the
shard's files (:mod:`pipeline.formats.shard_files`), its marker last and every one atomically:
a rerun writes the same bytes to the same paths.
"""

from __future__ import annotations

import collections
import ctypes
import io
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from gclip import InferenceConfig, Vocabulary
from pipeline.errors import is_out_of_memory
from pipeline.formats import images as image_io
from pipeline.formats import tars
from pipeline.formats.coco import ClassRegion, encode_annotations
from pipeline.formats.descriptors import ImageRecord, Shard
from pipeline.formats.layout import label_path
from pipeline.formats.shard_files import (
    ShardContext,
    ShardEmbeddings,
    ShardLabels,
    read_labels,
    read_marker,
    write_shard,
)
from pipeline.formats.storage import Storage
from pipeline.planning.plan import read_shard

if TYPE_CHECKING:
    from gclip import Segmentation

log = logging.getLogger(__name__)

# Told (shard index, images labelled so far, ids of the images being labelled now, whether
# the note must have arrived before the call) before each call to the segmenter, and
# (shard index, images labelled, (), False) at the end. An isolated attempt's notes must
# arrive: if the call kills the worker, the note names the culprit.
ProgressHook = Callable[[int, int, tuple[Any, ...], bool], None]


class SegmenterLike(Protocol):
    """What the pipeline needs of a segmenter (``gclip.Segmenter``, or a fake in tests)."""

    def segment(
        self, images: Sequence[Any], vocabulary: Vocabulary, config: InferenceConfig | None = None
    ) -> list[Segmentation]: ...


@runtime_checkable
class EmbedderLike(Protocol):
    """What a run with embeddings also needs of its segmenter (``gclip.Segmenter`` has it)."""

    def image_embeddings(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True, slots=True)
class ShardSettings:
    """What a worker needs to label shards, besides the segmenter.

    Attributes:
        context: what every shard file states (fingerprint, COCO info, vocabulary, id type).
        inference: how images become label maps.
        images_per_call: images handed to the segmenter at once.
        decode_threads: image-decoding threads.
        png_labels: also write indexed PNG label maps.
        min_instance_area: ``None``: one annotation per class and image; else thing classes
            split into connected components of at least this many pixels.
        max_image_pixels: images with more pixels are recorded as failed before they are
            decoded (``None``: no limit).
    """

    context: ShardContext
    inference: InferenceConfig
    images_per_call: int = 8
    decode_threads: int = 4
    png_labels: bool = False
    min_instance_area: int | None = None
    max_image_pixels: int | None = image_io.MAX_PIXELS

    @property
    def vocabulary(self) -> Vocabulary:
        return self.context.vocabulary

    @property
    def embeddings(self) -> bool:
        """The shard's files include ``embeddings/`` (each labelled image's CLIP embedding)."""
        return self.context.embedding_dtype is not None


@dataclass(frozen=True, slots=True)
class ShardTask:
    """One attempt at one shard.

    Attributes:
        shard: the shard's descriptor; the worker reads its rows.
        attempt: 1 for the first try.
        final: no retry follows: an image that runs out of memory on its own is recorded as
            failed instead of failing the attempt.
        retry_failed: relabel only the images the shard's marker records as failed, and
            replace its files with the merged result.
        isolate: segment one image per call (an earlier attempt's worker was lost: the
            culprit, if an image is one, is then the image in progress when it is lost again).
        excluded: ``(image_id, error, message)`` of images not to label, recorded as failed
            (each lost a worker while labelled alone).
    """

    shard: Shard
    attempt: int = 1
    final: bool = True
    retry_failed: bool = False
    isolate: bool = False
    excluded: tuple[tuple[Any, str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ShardResult:
    """What the shard's marker says, reported back to the coordinator.

    Attributes:
        seconds: wall time of the attempt's stages (decode, segment, encode), summed.
        host_seconds: of which reading, decoding, encoding and writing.
        node: the model worker that labelled the shard (its host, and Ray node on Ray).
    """

    shard: int
    images_done: int
    images_failed: int
    annotations: int
    failures_by_error: dict[str, int]
    seconds: float
    host_seconds: float = 0.0
    node: str = ""


@dataclass(frozen=True, slots=True)
class DecodedShard:
    """A shard after its first stage: rows read, images decoded (HWC uint8, original size).

    Attributes:
        records: every row of the shard, in order.
        todo: the rows this attempt labels (all, or only the failed ones when relabelling).
        images: the decodable rows of ``todo`` with their images.
        failures: failure records of the rows that could not be read or decoded.
    """

    task: ShardTask
    records: tuple[ImageRecord, ...]
    todo: tuple[ImageRecord, ...]
    images: tuple[tuple[ImageRecord, np.ndarray], ...]
    failures: tuple[dict[str, Any], ...]
    seconds: float


@dataclass(frozen=True, slots=True)
class SegmentedShard:
    """A shard after the model: per labelled row, its ``H x W`` label map (class indices) and
    ``H x W`` float32 confidence. Plain arrays: host workers unpickle them without torch."""

    task: ShardTask
    records: tuple[ImageRecord, ...]
    todo: tuple[ImageRecord, ...]
    results: tuple[tuple[ImageRecord, np.ndarray, np.ndarray], ...]
    failures: tuple[dict[str, Any], ...]
    host_seconds: float
    seconds: float
    node: str = ""  # the model worker's, set by it
    embeddings: ShardEmbeddings | None = None  # of ``results``' images, in their order


def process_shard(
    segmenter: SegmenterLike,
    task: ShardTask,
    settings: ShardSettings,
    storage: Storage,
    on_progress: ProgressHook | None = None,
) -> ShardResult:
    """Label every image of ``task.shard`` and write its files, the marker last: the three
    stages of :func:`decode_shard`, :func:`segment_shard` and :func:`encode_shard` in a row."""
    decoded = decode_shard(task, settings, storage)
    segmented = segment_shard(segmenter, decoded, settings, on_progress)
    return encode_shard(segmented, settings, storage)


def decode_shard(task: ShardTask, settings: ShardSettings, storage: Storage) -> DecodedShard:
    """Stage 1 (host): read the shard's rows and decode their images on a few threads."""
    start = time.perf_counter()
    records = todo = read_shard(task.shard)
    if task.retry_failed:
        failed = {f["image_id"] for f in read_marker(storage, task.shard.index).failures}
        todo = tuple(r for r in records if r.image_id in failed)
    excluded = {image_id: (error, message) for image_id, error, message in task.excluded}
    images: list[tuple[ImageRecord, np.ndarray]] = []
    failures = [
        image_io.ImageFailure(r.image_id, r.uri, *excluded[r.image_id]).to_json()
        for r in todo
        if r.image_id in excluded
    ]
    readable = [r for r in todo if r.image_id not in excluded]
    for rec, image in _decoded(readable, settings.decode_threads, settings.max_image_pixels):
        if isinstance(image, image_io.ImageFailure):
            failures.append(image.to_json())
        else:
            images.append((rec, image))
    seconds = time.perf_counter() - start
    return DecodedShard(task, records, todo, tuple(images), tuple(failures), seconds)


def segment_shard(
    segmenter: SegmenterLike,
    decoded: DecodedShard,
    settings: ShardSettings,
    on_progress: ProgressHook | None = None,
) -> SegmentedShard:
    """Stage 2 (model): label maps and confidences, ``images_per_call`` images at a time
    (one at a time when the task says ``isolate``); ``on_progress`` hears of each call. With
    embeddings, each call's labelled images are embedded in one more batch (an image whose
    embedding fails is recorded as failed, as one whose labels fail).

    A failing call is retried image by image, so one bad image is a failure record. An error
    that fails every image is raised (a bug, or a broken model), so the coordinator fails the
    shard with its traceback; running out of memory is raised too (the coordinator retries
    the attempt), except on the final attempt, where the images that do not fit on their own
    are recorded as failed.
    """
    start = time.perf_counter()
    failures = list(decoded.failures)
    results: list[tuple[ImageRecord, np.ndarray, np.ndarray]] = []
    vectors: list[np.ndarray] = []  # per result, with embeddings
    errors: list[Exception] = []
    final = decoded.task.final
    per_call = 1 if decoded.task.isolate else settings.images_per_call
    index, labelled = decoded.task.shard.index, 0
    for chunk in _chunks(iter(decoded.images), per_call):
        if on_progress is not None:
            ids = tuple(rec.image_id for rec, _ in chunk)
            on_progress(index, labelled, ids, decoded.task.isolate)
        labelled_now = list(_segment(segmenter, chunk, settings, failures, errors, final))
        if settings.embeddings:
            labelled_now, embedded = _embed(segmenter, chunk, labelled_now, failures, errors, final)
            vectors += embedded
        for rec, seg in labelled_now:
            results.append((rec, np.asarray(seg.labels_hw), np.asarray(seg.confidence_hw)))
        labelled += len(chunk)
    if on_progress is not None:
        on_progress(index, labelled, (), False)
    _release_freed_memory()
    if errors and not results and not decoded.task.retry_failed:
        # Relabelling a shard's few failed images proves nothing of the kind.
        error = RuntimeError(f"every image of {decoded.task.shard.name} failed in segmentation")
        raise error from errors[-1]
    return SegmentedShard(
        decoded.task,
        decoded.records,
        decoded.todo,
        tuple(results),
        tuple(failures),
        decoded.seconds,
        decoded.seconds + time.perf_counter() - start,
        embeddings=_shard_embeddings(segmenter, results, vectors) if settings.embeddings else None,
    )


def _embed(
    segmenter: SegmenterLike,
    chunk: list[tuple[ImageRecord, np.ndarray]],
    labelled: list[tuple[ImageRecord, Segmentation]],
    failures: list[dict[str, Any]],
    errors: list[Exception],
    final: bool,
) -> tuple[list[tuple[ImageRecord, Segmentation]], list[np.ndarray]]:
    """The CLIP image embeddings (``E`` float32 each) of a call's labelled images, in one
    batch; if that fails, image by image, an image that fails then being recorded as failed
    (its labels dropped: every labelled image has its embedding). Out of memory fails the
    attempt before the final one, as in :func:`_segment`."""
    if not isinstance(segmenter, EmbedderLike):
        raise TypeError(f"{type(segmenter).__name__} has no image_embeddings: no --embeddings")
    image_of = {id(rec): image for rec, image in chunk}
    if not labelled:
        return [], []
    try:
        batch_nd = segmenter.image_embeddings([image_of[id(rec)] for rec, _ in labelled])
        return labelled, list(np.asarray(batch_nd, np.float32))
    except Exception as err:
        if is_out_of_memory(err) and not final:
            raise
        log.warning("embedding %d images failed; retrying them one by one", len(labelled))
    kept, vectors = [], []
    for rec, seg in labelled:
        try:
            [vector] = segmenter.image_embeddings([image_of[id(rec)]])
        except Exception as err:  # per-image boundary
            _image_failed(rec, err, final, errors, failures)
            continue
        kept.append((rec, seg))
        vectors.append(np.asarray(vector, np.float32))
    return kept, vectors


def _shard_embeddings(
    segmenter: SegmenterLike,
    results: list[tuple[ImageRecord, np.ndarray, np.ndarray]],
    vectors: list[np.ndarray],
) -> ShardEmbeddings:
    ids = tuple(rec.image_id for rec, _, _ in results)
    if vectors:
        return ShardEmbeddings(ids, np.stack(vectors))
    assert isinstance(segmenter, EmbedderLike)
    return ShardEmbeddings(ids, segmenter.image_embeddings([]))  # 0 x E: the width stands


def _release_freed_memory() -> None:
    """Hand glibc's freed temporaries (tens of MB after a large image) back to the system
    before the results are copied out (into Ray's object store: 5 B a pixel more, at the
    worker's peak)."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc's; absent elsewhere
    if trim is not None:
        trim(0)


def encode_shard(
    segmented: SegmentedShard, settings: ShardSettings, storage: Storage
) -> ShardResult:
    """Stage 3 (host): RLE and summary rows, PNG label maps if asked, then the shard's files,
    the marker last (relabelling merges the shard's previous labels first)."""
    start = time.perf_counter()
    task = segmented.task
    labels = ShardLabels(failures=list(segmented.failures), embeddings=segmented.embeddings)
    for rec, labels_hw, confidence_hw in segmented.results:
        height, width = labels_hw.shape
        image_record = {
            "id": rec.coco_id,
            "image_id": rec.image_id,
            "file_name": rec.uri,
            "height": int(height),
            "width": int(width),
        }
        if settings.png_labels:
            label_file = label_path(rec.image_id)
            storage.write_atomic(label_file, _png(labels_hw, settings.vocabulary))
            image_record["label_file"] = label_file
        labels.images.append(image_record)
        encoded = encode_annotations(
            labels_hw, confidence_hw, settings.vocabulary, rec.coco_id, settings.min_instance_area
        )
        labels.annotations += encoded.annotations
        labels.summary += _summary_rows(rec, encoded.regions, labels_hw.size, settings.vocabulary)
    if task.retry_failed:
        previous = read_labels(storage, task.shard.index, settings.embeddings)
        labels = labels.merged(previous, {r.image_id for r in segmented.todo})
    labels = labels.ordered({r.image_id: r.coco_id for r in segmented.records})
    marker = write_shard(storage, task.shard.index, task.shard.digest, labels, settings.context)
    host = time.perf_counter() - start
    return ShardResult(
        task.shard.index,
        marker.images,
        marker.images_failed,
        marker.annotations,
        marker.failures_by_error,
        segmented.seconds + host,
        segmented.host_seconds + host,
        segmented.node,
    )


def _segment(
    segmenter: SegmenterLike,
    good: list[tuple[ImageRecord, np.ndarray]],
    settings: ShardSettings,
    failures: list[dict[str, Any]],
    errors: list[Exception],
    final: bool,
) -> Iterator[tuple[ImageRecord, Segmentation]]:
    """Segment a chunk together; if that fails, image by image so one bad image is isolated.

    Out of memory is not an image's fault until the final attempt: before it, it fails the
    attempt, which the coordinator retries.
    """
    if not good:
        return
    try:
        results = segmenter.segment(
            [img for _, img in good], settings.vocabulary, settings.inference
        )
        yield from ((rec, seg) for (rec, _), seg in zip(good, results, strict=True))
        return
    except Exception as err:
        if is_out_of_memory(err) and not final:
            raise
        log.warning(
            "a chunk of %d images failed; retrying them one by one", len(good), exc_info=True
        )
    for rec, img in good:
        try:
            [seg] = segmenter.segment([img], settings.vocabulary, settings.inference)
        except Exception as err:  # per-image boundary
            _image_failed(rec, err, final, errors, failures)
            continue
        yield rec, seg


def _decoded(
    records: Sequence[ImageRecord], threads: int, max_pixels: int | None
) -> Iterator[tuple[ImageRecord, np.ndarray | image_io.ImageFailure]]:
    """Decode on a thread pool, at most ``2 * threads`` images ahead of the consumer.

    Plain files are read on the pool, one read each; the members of a tar come from one
    forward read of it, made here between submissions (:func:`tars.record_bytes`), so a
    shard's images in a tar cost a few large reads, not a request each.
    """
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
        pending: collections.deque[
            tuple[ImageRecord, Future[np.ndarray | image_io.ImageFailure]]
        ] = collections.deque()
        for rec, data in tars.record_bytes(records):
            pending.append((rec, pool.submit(image_io.load, rec, max_pixels, data)))
            if len(pending) >= 2 * threads:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()


def _image_failed(
    rec: ImageRecord,
    err: Exception,
    final: bool,
    errors: list[Exception],
    failures: list[dict[str, Any]],
) -> None:
    """Record one image's failure; an out-of-memory error is the attempt's instead (re-raised)
    unless this is its last attempt, as memory may suffice on a retry."""
    if is_out_of_memory(err) and not final:
        raise err
    errors.append(err)
    failures.append(
        image_io.ImageFailure(rec.image_id, rec.uri, type(err).__name__, str(err)).to_json()
    )


def _chunks(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    """``items`` in lists of ``size`` (the last may be shorter)."""
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _summary_rows(
    rec: ImageRecord, regions: list[ClassRegion], pixels: int, vocabulary: Vocabulary
) -> list[dict[str, Any]]:
    """Per image and predicted class: pixel fraction and mean confidence (for curation)."""
    names = {c.id: c.name for c in vocabulary.classes}
    return [
        {
            "image_id": rec.image_id,
            "category_id": region.category_id,
            "category": names[region.category_id],
            "pixel_fraction": region.pixels / pixels,
            "mean_confidence": region.mean_confidence,
        }
        for region in regions
    ]


def _png(labels_hw: np.ndarray, vocabulary: Vocabulary) -> bytes:
    """An indexed (mode P) PNG: pixel value = class index, 255 = unlabelled; the palette holds
    the class colours so viewers show colours while trainers read the indices. Over 255
    classes, a 16-bit greyscale PNG: value = class index, 65535 = unlabelled."""
    height, width = labels_hw.shape
    if labels_hw.dtype == np.uint16:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(labels_hw, dtype=np.uint16)).save(buffer, format="PNG")
        return buffer.getvalue()
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
