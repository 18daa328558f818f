"""One shard's output files, written by its worker, the marker last.

For shard ``shard-NNNNNN``:

* ``annotations/shard-NNNNNN.parquet``: a row per annotation: ``image_id`` (as in the manifest),
  ``category_id``, ``category``, ``counts`` (COCO compressed RLE), ``height``, ``width``,
  ``area``, ``bbox`` (x, y, w, h), ``score`` and the image's ``uri``;
* ``summary/shard-NNNNNN.parquet``: per image and class, pixel fraction and mean confidence;
* ``coco/shard-NNNNNN.json``: a complete COCO file of the shard's images;
* ``embeddings/shard-NNNNNN.parquet`` (runs with ``--embeddings``): per labelled image, its
  ``image_id`` and ``embedding``, the CLIP image embedding (``fixed_size_list<float32 or
  float16>[E]``, L2-normalised);
* ``shards/shard-NNNNNN.json``: the marker: counts, the digest of the rows' ids, the failures.

Every file is written atomically and the marker last, so a marker means a complete shard, and
a rerun writes the same bytes to the same paths. The Parquet files of all shards share one
schema: each folder reads as one table (pyarrow, DuckDB, Ray Data, Spark).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gclip import Vocabulary
from pipeline.errors import DamagedFileError
from pipeline.formats.coco import categories
from pipeline.formats.layout import (
    annotation_table_path,
    coco_path,
    embedding_table_path,
    shard_path,
    summary_table_path,
)
from pipeline.formats.storage import Storage

ID_TYPES = {"string": pa.string(), "integer": pa.int64()}


def annotation_schema(id_kind: str) -> pa.Schema:
    """The ``annotations/`` dataset's schema; ``image_id`` keeps the manifest's type."""
    return pa.schema(
        [
            ("image_id", ID_TYPES[id_kind]),
            ("category_id", pa.int64()),
            ("category", pa.string()),
            ("counts", pa.string()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("area", pa.int64()),
            ("bbox", pa.list_(pa.float64(), 4)),
            ("score", pa.float64()),
            ("uri", pa.string()),
        ]
    )


def summary_schema(id_kind: str) -> pa.Schema:
    """The ``summary/`` dataset's schema (for curation: sort and filter images by class)."""
    return pa.schema(
        [
            ("image_id", ID_TYPES[id_kind]),
            ("category_id", pa.int64()),
            ("category", pa.string()),
            ("pixel_fraction", pa.float64()),
            ("mean_confidence", pa.float64()),
        ]
    )


def embedding_schema(id_kind: str, dim: int, dtype: str) -> pa.Schema:
    """The ``embeddings/`` dataset's schema: ``image_id`` as in the manifest, ``embedding`` a
    fixed-size list of ``dim`` floats (``dtype``: ``float32`` or ``float16``)."""
    return pa.schema(
        [
            ("image_id", ID_TYPES[id_kind]),
            ("embedding", pa.list_(pa.from_numpy_dtype(np.dtype(dtype)), dim)),
        ]
    )


@dataclass(frozen=True, slots=True)
class ShardMarker:
    """``shards/shard-NNNNNN.json``: a finished shard's counts (``schemas/shard.schema.json``).

    Attributes:
        shard: the shard's index.
        fingerprint: the run's settings fingerprint when the shard was labelled.
        digest: sha256 of the shard's image ids, as planned.
        images: images labelled; ``images_failed``: images recorded as failed.
        annotations: COCO annotations written.
        failures_by_error: failed images by exception class, most frequent first.
        failures: the failure records (``schemas/failure.schema.json``), in manifest order.
    """

    shard: int
    fingerprint: str
    digest: str
    images: int
    images_failed: int
    annotations: int
    failures_by_error: dict[str, int]
    failures: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, location: str) -> ShardMarker:
        """The marker read from ``location``; :class:`DamagedFileError` if it is not one."""
        problem = _marker_problem(data)
        if problem is not None:
            raise DamagedFileError(location, problem, _RELABEL)
        return cls(**data)


_RELABEL = (
    "Delete it and run the same jobs.label command again: the shard is labelled anew (its "
    "other files are rewritten)."
)
_MARKER_TYPES = {
    "shard": int,
    "fingerprint": str,
    "digest": str,
    "images": int,
    "images_failed": int,
    "annotations": int,
    "failures_by_error": dict,
    "failures": list,
}


def _marker_problem(data: Any) -> str | None:
    """What makes ``data`` no marker, or ``None``: a cheap structural check, since a resume
    may adopt many markers (the schema, with the failure records' shape, is checked in tests)."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not an object"
    if data.keys() != _MARKER_TYPES.keys():
        return f"fields {sorted(data)}, expected {sorted(_MARKER_TYPES)}"
    wrong = [k for k, t in _MARKER_TYPES.items() if not isinstance(data[k], t)]
    if wrong:
        return f"wrong types for {', '.join(wrong)}"
    if not all(isinstance(f, dict) and "image_id" in f and "error" in f for f in data["failures"]):
        return "failure records without image_id or error"
    return None


@dataclass(frozen=True, slots=True)
class ShardContext:
    """What every shard file of a run states besides its labels.

    Attributes:
        fingerprint: the run's settings fingerprint.
        info: the COCO ``info`` record (model, method, settings).
        vocabulary: the classes (COCO categories, category names).
        id_kind: ``string`` or ``integer``: the manifest's image_id type.
        embedding_dtype: ``float32`` or ``float16`` when the run writes ``embeddings/``,
            else ``None``.
    """

    fingerprint: str
    info: dict[str, Any]
    vocabulary: Vocabulary
    id_kind: str
    embedding_dtype: str | None = None


@dataclass(frozen=True, slots=True)
class ShardEmbeddings:
    """A shard's image embeddings: ``embedding_nd[i]`` (float32, unit norm) is the embedding
    of the manifest's image ``image_ids[i]``; ``N x E``."""

    image_ids: tuple[Any, ...]
    embedding_nd: np.ndarray

    def __post_init__(self) -> None:
        assert self.embedding_nd.ndim == 2 and len(self.image_ids) == len(self.embedding_nd)

    def merged(self, previous: ShardEmbeddings) -> ShardEmbeddings:
        return ShardEmbeddings(
            previous.image_ids + self.image_ids,
            np.concatenate([previous.embedding_nd, self.embedding_nd.astype(np.float32)]),
        )

    def ordered(self, row_of: dict[Any, int]) -> ShardEmbeddings:
        order = sorted(range(len(self.image_ids)), key=lambda i: row_of[self.image_ids[i]])
        return ShardEmbeddings(
            tuple(self.image_ids[i] for i in order), self.embedding_nd[np.asarray(order, int)]
        )


@dataclass(slots=True)
class ShardLabels:
    """A shard's labels: COCO image records, annotations (no ``id``; ``image_id`` is the COCO
    image id), summary rows and failure records; the images' embeddings when the run makes
    them."""

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    embeddings: ShardEmbeddings | None = None

    def merged(self, previous: ShardLabels, relabelled: set[Any]) -> ShardLabels:
        """These labels with ``previous``, whose failures of ``relabelled`` images are dropped."""
        embeddings = self.embeddings
        if embeddings is not None and previous.embeddings is not None:
            embeddings = embeddings.merged(previous.embeddings)
        return ShardLabels(
            previous.images + self.images,
            previous.annotations + self.annotations,
            previous.summary + self.summary,
            [f for f in previous.failures if f["image_id"] not in relabelled] + self.failures,
            embeddings,
        )

    def ordered(self, row_of: dict[Any, int]) -> ShardLabels:
        """Sorted by manifest row (stably: an image's own order stays), so a file is the same
        whichever attempt labelled which image. ``row_of``: manifest image_id -> row."""
        return ShardLabels(
            sorted(self.images, key=lambda i: i["id"]),
            sorted(self.annotations, key=lambda a: a["image_id"]),
            sorted(self.summary, key=lambda s: row_of[s["image_id"]]),
            sorted(self.failures, key=lambda f: row_of[f["image_id"]]),
            None if self.embeddings is None else self.embeddings.ordered(row_of),
        )


def write_shard(
    storage: Storage, index: int, digest: str, labels: ShardLabels, context: ShardContext
) -> ShardMarker:
    """Write the shard's files, the marker last; return the marker."""
    coco = {
        "info": context.info,
        "categories": categories(context.vocabulary),
        "images": labels.images,
        "annotations": [{**a, "id": n} for n, a in enumerate(labels.annotations, start=1)],
    }
    storage.write_atomic(
        annotation_table_path(index),
        _parquet(annotation_rows(labels, context.vocabulary), annotation_schema(context.id_kind)),
    )
    storage.write_atomic(
        summary_table_path(index), _parquet(labels.summary, summary_schema(context.id_kind))
    )
    storage.write_atomic(coco_path(index), _json(coco))
    if context.embedding_dtype is not None:
        assert labels.embeddings is not None, "a run with embeddings embeds every labelled image"
        storage.write_atomic(
            embedding_table_path(index),
            embedding_parquet(labels.embeddings, context.id_kind, context.embedding_dtype),
        )
    marker = ShardMarker(
        shard=index,
        fingerprint=context.fingerprint,
        digest=digest,
        images=len(labels.images),
        images_failed=len(labels.failures),
        annotations=len(labels.annotations),
        failures_by_error=dict(Counter(f["error"] for f in labels.failures).most_common()),
        failures=labels.failures,
    )
    storage.write_atomic(shard_path(index), _json(marker.to_json()))
    return marker


def read_marker(storage: Storage, index: int) -> ShardMarker:
    """Shard ``index``'s marker.

    Raises:
        DamagedFileError: the file is not valid JSON or not a marker; names it and the fix.
    """
    path = shard_path(index)
    return ShardMarker.from_json(_read_json(storage, path, _RELABEL), storage.uri(path))


def read_coco(storage: Storage, index: int) -> dict[str, Any]:
    coco: dict[str, Any] = _read_json(storage, coco_path(index), _RELABEL_COCO)
    if not isinstance(coco, dict) or not {"images", "annotations"} <= coco.keys():
        raise DamagedFileError(storage.uri(coco_path(index)), "not a COCO file", _RELABEL_COCO)
    return coco


_RELABEL_COCO = (
    "Delete the shard's marker (shards/ folder, same shard name) and run the same jobs.label "
    "command again: it labels the shard anew."
)


def _read_json(storage: Storage, path: str, fix: str) -> Any:
    try:
        return json.loads(storage.read(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(storage.uri(path), f"not JSON: {err}", fix) from None


def read_labels(storage: Storage, index: int, embeddings: bool = False) -> ShardLabels:
    """A finished shard's labels, as :func:`write_shard` was given them (its embeddings too
    when ``embeddings``; a shard made without them then has none: ``N = 0``)."""
    coco = read_coco(storage, index)
    annotations = [{k: v for k, v in a.items() if k != "id"} for a in coco["annotations"]]
    summary = pq.read_table(io.BytesIO(storage.read(summary_table_path(index)))).to_pylist()
    failures = read_marker(storage, index).failures
    vectors = read_embeddings(storage, index) if embeddings else None
    return ShardLabels(coco["images"], annotations, summary, failures, vectors)


def read_embeddings(storage: Storage, index: int) -> ShardEmbeddings | None:
    """Shard ``index``'s ``embeddings/`` table as float32 (``None`` if it has none)."""
    path = embedding_table_path(index)
    if not storage.exists(path):
        return None
    table = pq.read_table(io.BytesIO(storage.read(path)))
    column = table.column("embedding").combine_chunks()
    dim = column.type.list_size
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return ShardEmbeddings(tuple(table.column("image_id").to_pylist()), flat.reshape(-1, dim))


def embedding_parquet(embeddings: ShardEmbeddings, id_kind: str, dtype: str) -> bytes:
    """The ``embeddings/`` file of a shard: one row per image, vectors stored as ``dtype``."""
    _, dim = embeddings.embedding_nd.shape
    values = np.ascontiguousarray(embeddings.embedding_nd, dtype=dtype).reshape(-1)
    schema = embedding_schema(id_kind, dim, dtype)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(values), dim)
    ids = pa.array(list(embeddings.image_ids), type=schema.field("image_id").type)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_arrays([ids, vectors], schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def annotation_rows(labels: ShardLabels, vocabulary: Vocabulary) -> list[dict[str, Any]]:
    """One flat row per annotation, for the ``annotations/`` dataset."""
    names = {c.id: c.name for c in vocabulary.classes}
    images = {image["id"]: image for image in labels.images}
    rows = []
    for ann in labels.annotations:
        image = images[ann["image_id"]]
        rows.append(
            {
                "image_id": image["image_id"],
                "category_id": ann["category_id"],
                "category": names[ann["category_id"]],
                "counts": ann["segmentation"]["counts"],
                "height": image["height"],
                "width": image["width"],
                "area": ann["area"],
                "bbox": ann["bbox"],
                "score": ann["score"],
                "uri": image["file_name"],
            }
        )
    return rows


def _parquet(rows: list[dict[str, Any]], schema: pa.Schema) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()
