"""The run's final files, assembled from finished shard files.

``annotations.json`` (one COCO file), ``failures.jsonl``, ``summary.parquet`` and ``run.json``;
each written atomically. ``annotations.json`` holds no timestamps, so an interrupted-and-resumed
run produces the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from gclip import Vocabulary
from pipeline.formats.coco import categories
from pipeline.formats.layout import ANNOTATIONS, FAILURES, RUN, SUMMARY, shard_path
from pipeline.formats.storage import Storage

_SUMMARY_SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("category_id", pa.int64()),
        ("category", pa.string()),
        ("pixel_fraction", pa.float64()),
        ("mean_confidence", pa.float64()),
    ]
)


def read_shard(storage: Storage, shard: int) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(storage.read(shard_path(shard)))
    return data


def assemble(
    storage: Storage, shards: Iterable[int], vocabulary: Vocabulary, info: dict[str, Any]
) -> dict[str, Any]:
    """Write annotations.json, failures.jsonl and summary.parquet from the given shard files.

    Streams shard by shard (each shard file is read twice: images first, then annotations), so
    memory holds one shard at a time whatever the size of the run.

    Returns:
        counts: images labelled, images failed, annotations, failures by error class.
    """
    order = sorted(shards)
    counts: dict[str, Any] = {"images_labelled": 0, "images_failed": 0, "annotations": 0}
    by_error: Counter[str] = Counter()
    cats = categories(vocabulary)
    schemas.validate(
        {"info": info, "categories": cats, "images": [], "annotations": []}, "annotations"
    )
    with (
        storage.open_atomic(ANNOTATIONS) as coco,
        storage.open_atomic(FAILURES) as failures,
        storage.open_atomic(SUMMARY) as summary_file,
        pq.ParquetWriter(summary_file, _SUMMARY_SCHEMA) as summary,
    ):
        coco.write(b'{"info":' + _json(info) + b',"categories":' + _json(cats) + b',"images":[')
        for shard in order:
            data = read_shard(storage, shard)
            _write_items(coco, data["images"], first=counts["images_labelled"] == 0)
            counts["images_labelled"] += len(data["images"])
            counts["images_failed"] += len(data["failures"])
            by_error.update(f["error"] for f in data["failures"])
            failures.write(b"".join(_json(f) + b"\n" for f in data["failures"]))
            summary.write_table(pa.Table.from_pylist(data["summary"], schema=_SUMMARY_SCHEMA))
        coco.write(b'],"annotations":[')
        for shard in order:
            annotations = read_shard(storage, shard)["annotations"]
            first = counts["annotations"] == 0
            for annotation in annotations:
                counts["annotations"] += 1
                annotation["id"] = counts["annotations"]
            _write_items(coco, annotations, first=first)
        coco.write(b"]}")
    counts["failures_by_error"] = dict(by_error.most_common())
    return counts


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write_items(stream: Any, items: list[dict[str, Any]], first: bool) -> None:
    """Append items to an open JSON array, with the commas between them."""
    if items:
        stream.write((b"" if first else b",") + b",".join(_json(item) for item in items))


def write_run(storage: Storage, run: dict[str, Any]) -> None:
    schemas.validate(run, "run")
    storage.write_atomic(RUN, json.dumps(run, indent=2, default=str).encode())


def read_run(storage: Storage) -> dict[str, Any] | None:
    if not storage.exists(RUN):
        return None
    data: dict[str, Any] = json.loads(storage.read(RUN))
    return data
