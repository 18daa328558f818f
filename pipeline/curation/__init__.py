"""Curating a labelled run by its image embeddings: search (``jobs.search``) and
near-duplicate groups (``jobs.dedup``). Reads the ``embeddings/`` a run labelled with
``--embeddings`` writes; imports neither Ray nor, until a query is encoded, torch."""

from pipeline.curation.dedup import (
    DEFAULT_THRESHOLD,
    DedupSettings,
    Duplicates,
    find_duplicates,
    write_duplicates,
)
from pipeline.curation.embeddings import EmbeddedRun, EmbeddingShard, open_embeddings, read_shards
from pipeline.curation.keep import write_keep_manifest
from pipeline.curation.search import Hit, top_k
from pipeline.curation.where import Clause, parse_where

__all__ = [
    "DEFAULT_THRESHOLD",
    "Clause",
    "DedupSettings",
    "Duplicates",
    "EmbeddedRun",
    "EmbeddingShard",
    "Hit",
    "find_duplicates",
    "open_embeddings",
    "parse_where",
    "read_shards",
    "top_k",
    "write_duplicates",
    "write_keep_manifest",
]
