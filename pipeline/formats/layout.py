"""The output folder's layout: every file name a run writes, in one place.

Writers (workers, the coordinator) and readers (status, evaluation, previews) name files only
through this module. ``FORMAT_VERSION`` changes whenever a file changes shape; a run written in
another format is refused on resume rather than mixed with new shards.
"""

from __future__ import annotations

import hashlib
import re

FORMAT_VERSION = 3

RUN = "run.json"
# Per shard, written by its worker: the Parquet datasets, a COCO file, then the marker last.
ANNOTATION_TABLES, SUMMARY_TABLES, COCO_SHARDS = "annotations", "summary", "coco"
SHARDS, LEDGER, LABELS = "shards", "ledger", "labels"
# Merged at the end of a run small enough for one file, or by `python -m jobs.merge`.
ANNOTATIONS, FAILURES = "annotations.json", "failures.jsonl"
EVALUATION, EVALUATION_TABLE, PREVIEWS = "evaluation.json", "evaluation.md", "previews"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def shard_name(index: int) -> str:
    """The one name of shard ``index``, shared by its output file and its ledger entry."""
    return f"shard-{index:06d}"


def shard_path(index: int) -> str:
    """The shard's marker: its presence means every other file of the shard is in place."""
    return f"{SHARDS}/{shard_name(index)}.json"


def coco_path(index: int) -> str:
    return f"{COCO_SHARDS}/{shard_name(index)}.json"


def annotation_table_path(index: int) -> str:
    return f"{ANNOTATION_TABLES}/{shard_name(index)}.parquet"


def summary_table_path(index: int) -> str:
    return f"{SUMMARY_TABLES}/{shard_name(index)}.parquet"


def ledger_state_path(generation: int) -> str:
    return f"{LEDGER}/state-{generation:06d}.parquet"


def ledger_segment_path(generation: int, sequence: int) -> str:
    return f"{LEDGER}/segment-{generation:06d}-{sequence:06d}.jsonl"


def label_file_name(image_id: str | int) -> str:
    """A file name for an image's PNG: the id itself when safe, else ``_`` + a hash of it."""
    text = str(image_id)
    if _SAFE_NAME.match(text):  # starts alphanumeric: never ".", ".." or a hidden file
        return f"{text}.png"
    return f"_{hashlib.sha256(text.encode()).hexdigest()[:24]}.png"


def label_path(image_id: str | int) -> str:
    return f"{LABELS}/{label_file_name(image_id)}"
