"""The output folder's layout: every file name a run writes, in one place.

Writers (workers, the coordinator) and readers (status, evaluation, previews) name files only
through this module. ``FORMAT_VERSION`` changes whenever a file changes shape; a run written in
another format is refused on resume rather than mixed with new shards.
"""

from __future__ import annotations

import hashlib
import re

import pyarrow as pa
import pyarrow.compute as pc

FORMAT_VERSION = 4

RUN = "run.json"
# Per shard, written by its worker: the Parquet datasets, a COCO file, then the marker last.
ANNOTATION_TABLES, SUMMARY_TABLES, COCO_SHARDS = "annotations", "summary", "coco"
# Per shard with --embeddings: one CLIP image embedding per labelled image.
EMBEDDING_TABLES = "embeddings"
SHARDS, LEDGER, LABELS = "shards", "ledger", "labels"
# Merged at the end of a run small enough for one file, or by `python -m jobs.merge`.
ANNOTATIONS, FAILURES = "annotations.json", "failures.jsonl"
EVALUATION, EVALUATION_TABLE, PREVIEWS = "evaluation.json", "evaluation.md", "previews"
REPORT = "report.html"
# Curation (jobs.search, jobs.dedup): one page per query, one table of near-duplicate groups.
SEARCH, DUPLICATES = "search", "duplicates.parquet"
# Run files found damaged (ledger files, markers) are moved here by the driver, by folder.
DAMAGED = "damaged"
# The driver's check that every node sees the output (running/storage_probe.py); emptied after.
PROBES = ".probe"

# A label file keeps its image's relative path with the image suffix swapped for ``.png``
# (``nested/d.jpg`` -> ``labels/nested/d.png``), as training frameworks pair images and masks.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
_IMAGE_SUFFIX = re.compile(r"\.(jpe?g|png|webp|bmp|tiff?|gif)$", re.IGNORECASE)
# Characters no file name should hold (controls, and what Windows or shells refuse), made `_`.
_UNSAFE_CHARACTERS = re.compile(r'[\x00-\x1f\x7f\\:*?"<>|]')
_MAX_SEGMENT_BYTES, _MAX_PATH_BYTES = 200, 1000


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


def embedding_table_path(index: int) -> str:
    return f"{EMBEDDING_TABLES}/{shard_name(index)}.parquet"


def ledger_state_path(generation: int) -> str:
    return f"{LEDGER}/state-{generation:06d}.parquet"


def ledger_segment_path(generation: int, sequence: int) -> str:
    return f"{LEDGER}/segment-{generation:06d}-{sequence:06d}.jsonl"


def label_file_name(image_id: str | int) -> str:
    """An image's label file, relative to ``labels/``: its id as a relative path, sanitised,
    with an image suffix swapped for ``.png`` (``nested/deeper/d.jpg`` -> ``nested/deeper/d.png``).

    Characters a file system or shell refuses become ``_``. An id that cannot be made a safe
    relative path (absolute, empty or ``.``/``..`` segments, overlong) gets ``_`` + a hash of
    it instead, so nothing escapes ``labels/``. Distinct ids may share a name (``a.jpg`` and
    ``a.png``, or ``a:b`` and ``a_b``): the planner refuses such manifests when label maps are
    written (see :func:`label_name_keys`).
    """
    text = str(image_id)
    segments = _UNSAFE_CHARACTERS.sub("_", text).split("/")
    if len(text.encode()) <= _MAX_PATH_BYTES and all(_safe(s) for s in segments):
        return _IMAGE_SUFFIX.sub("", "/".join(segments)) + ".png"
    return f"_{hashlib.sha256(text.encode()).hexdigest()[:24]}.png"


def label_path(image_id: str | int) -> str:
    return f"{LABELS}/{label_file_name(image_id)}"


def label_name_keys(ids: pa.Array) -> pa.Array:
    """Per string id, a key that is equal wherever :func:`label_file_name` is (vectorised, for
    the planner's collision check over millions of ids). Keys may also be equal for ids with
    different names (hashed ones): a match is a suspect, confirmed with the names themselves.
    """
    sanitised = pc.replace_substring_regex(ids, _UNSAFE_CHARACTERS.pattern, "_")
    return pc.replace_substring_regex(sanitised, "(?i)" + _IMAGE_SUFFIX.pattern, "")


def _safe(segment: str) -> bool:
    return segment not in ("", ".", "..") and len(segment.encode()) <= _MAX_SEGMENT_BYTES
