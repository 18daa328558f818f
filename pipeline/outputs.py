"""The run's final files, assembled from finished shard files.

``annotations.json`` (one COCO file), ``failures.jsonl``, ``summary.parquet`` and ``run.json``;
each written atomically. ``annotations.json`` holds no timestamps, so an interrupted-and-resumed
run produces the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import schemas
from gclip import Vocabulary
from pipeline.coco import categories
from pipeline.storage import Storage
from pipeline.worker import shard_path

ANNOTATIONS, FAILURES, SUMMARY, RUN = (
    "annotations.json",
    "failures.jsonl",
    "summary.parquet",
    "run.json",
)
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
) -> dict[str, int]:
    """Write annotations.json, failures.jsonl and summary.parquet from the given shard files.

    Returns:
        counts: images labelled, images failed, annotations.
    """
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    failures: list[dict[str, Any]] = []
    summary: list[dict[str, Any]] = []
    for shard in sorted(shards):
        data = read_shard(storage, shard)
        images += data["images"]
        annotations += data["annotations"]
        failures += data["failures"]
        summary += data["summary"]
    for number, annotation in enumerate(annotations, start=1):
        annotation["id"] = number
    coco = {
        "info": info,
        "images": images,
        "annotations": annotations,
        "categories": categories(vocabulary),
    }
    schemas.validate(coco, "annotations")
    storage.write_atomic(ANNOTATIONS, json.dumps(coco, separators=(",", ":")).encode())
    storage.write_atomic(FAILURES, "".join(json.dumps(f) + "\n" for f in failures).encode())
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(summary, schema=_SUMMARY_SCHEMA), buffer)
    storage.write_atomic(SUMMARY, buffer.getvalue())
    return {
        "images_labelled": len(images),
        "images_failed": len(failures),
        "annotations": len(annotations),
    }


def write_run(storage: Storage, run: dict[str, Any]) -> None:
    schemas.validate(run, "run")
    storage.write_atomic(RUN, json.dumps(run, indent=2, default=str).encode())


def read_run(storage: Storage) -> dict[str, Any] | None:
    if not storage.exists(RUN):
        return None
    data: dict[str, Any] = json.loads(storage.read(RUN))
    return data
