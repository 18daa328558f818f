"""A run's predictions as COCO files: the per-shard ones, or one merged file.

``location`` is a run's output folder (its ``coco/`` shard files, else its merged
``annotations.json``) or a COCO ``.json`` file itself. Readers take the files one at a time,
so memory holds one shard whatever the run's size.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from typing import Any

import schemas
from pipeline.formats.layout import ANNOTATIONS, COCO_SHARDS
from pipeline.formats.storage import Storage


def folder_of(location: str) -> str:
    """The folder of ``location``: a run's output folder itself, or the folder of a COCO file
    (where what is read from it, such as scores, is written)."""
    if location.endswith(".json"):
        return posixpath.dirname(location.rstrip("/")) or "."
    return location


class Predictions:
    """The COCO files of a run (or one file), listed once."""

    def __init__(self, location: str) -> None:
        if location.endswith(".json"):
            name = posixpath.basename(location.rstrip("/"))
            self.storage, self.files = Storage(folder_of(location), create=False), [name]
            return
        self.storage = Storage(location, create=False)
        self.files = self.storage.list(COCO_SHARDS) or [ANNOTATIONS]
        if not self.storage.exists(self.files[0]):
            raise FileNotFoundError(
                f"{location} holds neither {COCO_SHARDS}/ shard files nor {ANNOTATIONS}: "
                "not a gclip-label output (or no shard has finished yet)."
            )

    def read(self, relative: str) -> dict[str, Any]:
        """One COCO file, checked against ``schemas/annotations.schema.json``."""
        coco: dict[str, Any] = json.loads(self.storage.read(relative))
        schemas.validate(coco, "annotations")
        return coco

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for relative in self.files:
            yield self.read(relative)
