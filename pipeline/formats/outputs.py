"""The merged COCO file of a run's shards (``run.json`` is :mod:`pipeline.formats.run_record`).

``annotations.json`` (one COCO file) and ``failures.jsonl`` are merged from the shards' files,
streaming one shard at a time, so memory stays bounded whatever the run's size: at the end of
a run small enough to be useful as one file, or on demand (``python -m jobs.merge``). They hold
no timestamps: a resumed run merges the same bytes as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import schemas
from pipeline.formats.layout import ANNOTATIONS, FAILURES
from pipeline.formats.shard_files import read_coco, read_marker
from pipeline.formats.storage import Storage

FILE_NAMES = ("uri", "image_id")


def merge(
    storage: Storage,
    shards: Sequence[int],
    info: dict[str, Any] | None = None,
    categories: list[dict[str, Any]] | None = None,
    name: str = ANNOTATIONS,
    file_names: str = "uri",
) -> dict[str, int]:
    """Write ``annotations.json`` (or ``name``) and ``failures.jsonl`` from the shards' files.

    Each COCO shard file is read twice (images, then annotations) and annotation ids are
    numbered anew across the run, so memory holds one shard at a time.

    Args:
        storage: the run's output folder.
        shards: finished shard indices, merged in this order.
        info, categories: the COCO header; by default the first shard's.
        name: the COCO file's path, relative to ``storage``.
        file_names: what images' ``file_name`` holds: ``uri`` (where the job read them), or
            ``image_id`` (with a manifest from ``jobs.manifest``, the path relative to the
            image folder, which is how labelling tools such as CVAT name a task's images).

    Returns:
        ``images`` and ``annotations`` written.
    """
    if info is None or categories is None:
        if not shards:
            raise ValueError(f"{storage.root} holds no finished shard to merge.")
        first = read_coco(storage, shards[0])
        info, categories = first["info"], first["categories"]
    schemas.validate(
        {"info": info, "categories": categories, "images": [], "annotations": []}, "annotations"
    )
    counts = {"images": 0, "annotations": 0}
    if file_names not in FILE_NAMES:
        raise ValueError(f"file_names must be one of {FILE_NAMES}, got {file_names!r}.")
    with storage.open_atomic(name) as coco, storage.open_atomic(FAILURES) as failures:
        coco.write(b'{"info":' + _json(info) + b',"categories":' + _json(categories))
        coco.write(b',"images":[')
        for shard in shards:
            images = read_coco(storage, shard)["images"]
            if file_names == "image_id":
                images = [{**image, "file_name": str(image["image_id"])} for image in images]
            _write_items(coco, images, first=counts["images"] == 0)
            counts["images"] += len(images)
            failed = read_marker(storage, shard).failures
            failures.write(b"".join(_json(f) + b"\n" for f in failed))
        coco.write(b'],"annotations":[')
        for shard in shards:
            annotations = read_coco(storage, shard)["annotations"]
            none_yet = counts["annotations"] == 0
            for annotation in annotations:
                counts["annotations"] += 1
                annotation["id"] = counts["annotations"]
            _write_items(coco, annotations, first=none_yet)
        coco.write(b"]}")
    return counts


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _write_items(stream: Any, items: list[dict[str, Any]], first: bool) -> None:
    """Append items to an open JSON array, with the commas between them."""
    if items:
        stream.write((b"" if first else b",") + b",".join(_json(item) for item in items))
