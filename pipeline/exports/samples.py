"""The samples of an export in their one order, each with its label map and source bytes.

The order is the run's: shard, then manifest row. A :class:`Cursor` names a place in it
(``shard``, ``offset``: the ``offset``-th selected image of that shard), so an interrupted
export restarts exactly where its last finished part ended, without reading what came before.
Source bytes are read on a few threads, a bounded window ahead of the writer; an image that
cannot be read becomes a :class:`SampleFailure`, in its place in the order.
"""

from __future__ import annotations

import hashlib
import io
import urllib.parse
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipeline.exports.selection import (
    Filter,
    ImageId,
    RunLabels,
    SampleRecord,
    ShardRows,
    decode_label_png,
    encode_label_png,
)
from pipeline.formats import tars
from pipeline.formats.descriptors import ImageRecord
from pipeline.formats.layout import IMAGE_SUFFIXES
from pipeline.formats.storage import read_bytes

READ_THREADS = 8


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A place in the samples' order: before the ``offset``-th selected image of ``shard``."""

    shard: int
    offset: int

    def to_json(self) -> list[int]:
        return [self.shard, self.offset]


@dataclass(frozen=True, slots=True)
class Sample:
    """One image ready to write.

    Attributes:
        labels_hw: ``H x W`` label values (uint8, 255 unlabelled; uint16, 65535).
        label_png: the same as a PNG: the run's own file, else encoded as the run encodes.
        data: the source file's bytes, untouched (``None`` when the format needs none).
    """

    record: SampleRecord
    labels_hw: np.ndarray
    label_png: bytes
    data: bytes | None


@dataclass(frozen=True, slots=True)
class SampleFailure:
    """A selected image that could not be read: it is left out and recorded."""

    record: SampleRecord
    error: str
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "image_id": self.record.image_id,
            "uri": self.record.uri,
            "error": self.error,
            "message": self.message,
        }


def samples(
    run: RunLabels, chosen: Filter, start: Cursor, with_bytes: bool, threads: int = READ_THREADS
) -> Iterator[tuple[Cursor, Sample | SampleFailure]]:
    """Each selected image from ``start`` on, with the cursor just after it.

    Args:
        run: the run.
        chosen: which images.
        start: where to begin (a finished part's end).
        with_bytes: read the source files (formats that copy the images).
        threads: source reads in flight.
    """
    colors = [c["color"] for c in run.categories]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="export-read") as pool:
        for shard in run.shards:
            if shard < start.shard:
                continue
            skip = start.offset if shard == start.shard else 0
            rows = run.rows(shard, chosen, with_masks=not run.png_labels)
            records = rows.records[skip:]
            sources = (
                _sources(records, pool, threads) if with_bytes else iter([None] * len(records))
            )
            for offset, (record, data) in enumerate(zip(records, sources, strict=True), skip):
                yield Cursor(shard, offset + 1), _sample(run, rows, record, data, colors)


def _sample(
    run: RunLabels,
    rows: ShardRows,
    record: SampleRecord,
    data: bytes | Exception | None,
    colors: list[list[int]],
) -> Sample | SampleFailure:
    if isinstance(data, Exception):
        return SampleFailure(record, type(data).__name__, str(data))
    try:
        if run.png_labels:
            png = run.label_png(record)
            return Sample(record, decode_label_png(png), png, data)
        labels_hw = run.label_map(record, rows)
    except FileNotFoundError as err:  # a label map deleted since the run
        return SampleFailure(record, type(err).__name__, str(err))
    return Sample(record, labels_hw, encode_label_png(labels_hw, colors), data)


def _sources(
    records: list[SampleRecord], pool: ThreadPoolExecutor, threads: int
) -> Iterator[bytes | Exception]:
    """The bytes of each record's file (or the error that stopped them), in order.

    Plain files are read on ``pool``, ``2 * threads`` ahead; members of a tar come from one
    forward read of it (:func:`pipeline.formats.tars.record_bytes`), kept until their turn.
    """
    as_images = [ImageRecord(n, r.image_id, r.uri) for n, r in enumerate(records)]
    early: dict[int, bytes | Exception] = {}
    members = [rec for rec in as_images if tars.split_member(rec.uri) is not None]
    member_bytes = iter(tars.record_bytes(members)) if members else iter(())
    pending: deque[Future[bytes | Exception] | bytes | Exception] = deque()
    position = 0

    def ahead() -> None:
        nonlocal position
        rec = as_images[position]
        position += 1
        if tars.split_member(rec.uri) is None:
            pending.append(pool.submit(_read, rec.uri))
            return
        while rec.coco_id not in early:  # the tar's members come in archive order
            got, data = next(member_bytes)
            early[got.coco_id] = data if data is not None else FileNotFoundError(got.uri)
        pending.append(early.pop(rec.coco_id))

    for _ in records:
        while position < len(records) and len(pending) < 2 * threads:
            ahead()
        first = pending.popleft()
        yield first.result() if isinstance(first, Future) else first


def _read(uri: str) -> bytes | Exception:
    try:
        return read_bytes(uri)
    except Exception as err:  # per-image boundary: a bad file is a failure record
        return err


_MAX_KEY_BYTES = 200
_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def sample_key(image_id: ImageId) -> str:
    """A file-name-safe, dot-free key for an image id, distinct for distinct ids.

    The id is percent-encoded whole (``/`` too, so keys are flat) and its dots are encoded
    as ``%2E``: WebDataset (and Ray Data) cut a member's key at the first dot of its name, so
    ``a/b.c.jpg`` becomes ``a%2Fb%2Ec%2Ejpg`` and its files ``a%2Fb%2Ec%2Ejpg.jpg``,
    ``...label.png``, ``...json``. ``urllib.parse.unquote(key)`` gives the id back (as a
    string). An id whose key would be over 200 bytes gets ``_`` + a hash of it instead.
    """
    key = urllib.parse.quote(str(image_id), safe="").replace(".", "%2E")
    if len(key) <= _MAX_KEY_BYTES:
        return key
    return "_" + hashlib.sha256(str(image_id).encode()).hexdigest()[:24]


def source_extension(uri: str, data: bytes) -> str:
    """The extension a copy of the source keeps: its own image suffix (lower case), else the
    one of the format its bytes are in (``bin`` if Pillow cannot tell)."""
    name = uri.rsplit("#", 1)[-1].rsplit("/", 1)[-1].split("?", 1)[0]
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if f".{suffix}" in IMAGE_SUFFIXES:
        return suffix
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _FORMATS.get(image.format or "", "bin")
    except Exception:  # not an image Pillow knows: the bytes are still copied
        return "bin"
