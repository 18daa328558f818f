"""The output folder's layout: every file name a run writes, in one place.

Writers (workers, the coordinator) and readers (status, evaluation, previews) name files only
through this module. ``FORMAT_VERSION`` changes whenever a file changes shape; a run written in
another format is refused on resume rather than mixed with new shards.
"""

from __future__ import annotations

import hashlib
import re

FORMAT_VERSION = 2

RUN = "run.json"
ANNOTATIONS = "annotations.json"
FAILURES = "failures.jsonl"
SUMMARY = "summary.parquet"
SHARDS, LEDGER, LABELS = "shards", "ledger", "labels"
EVALUATION, EVALUATION_TABLE, PREVIEWS = "evaluation.json", "evaluation.md", "previews"

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def shard_name(index: int) -> str:
    """The one name of shard ``index``, shared by its output file and its ledger entry."""
    return f"shard-{index:06d}"


def shard_path(index: int) -> str:
    return f"{SHARDS}/{shard_name(index)}.json"


def ledger_path(index: int) -> str:
    return f"{LEDGER}/{shard_name(index)}.json"


def label_file_name(image_id: str | int) -> str:
    """A file name for an image's PNG: the id itself when safe, else ``_`` + a hash of it."""
    text = str(image_id)
    if _SAFE_NAME.match(text):  # starts alphanumeric: never ".", ".." or a hidden file
        return f"{text}.png"
    return f"_{hashlib.sha256(text.encode()).hexdigest()[:24]}.png"


def label_path(image_id: str | int) -> str:
    return f"{LABELS}/{label_file_name(image_id)}"
