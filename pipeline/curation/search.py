"""Rank a run's images by cosine similarity to a query vector: exact, memory bounded.

The embeddings are read one finished shard at a time and a running top ``k`` is kept
(``numpy.argpartition`` on each shard's scores, then a merge with the ``k`` kept so far), so
memory holds one shard's vectors plus ``k`` hits whatever the run's size, and the answer is
the same as sorting every score of the run: exact, no index to build or keep in sync. A run of
millions of images costs one read of its embeddings (D x 4 bytes an image) per query; a
service answering many queries would build an index (faiss, see :mod:`pipeline.curation.dedup`).

Ties are broken by run order (shard, then row), so the ranking is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.curation.embeddings import EmbeddedRun, open_embeddings, read_shards
from pipeline.curation.where import SUMMARY_COLUMNS, Clause, where_mask
from pipeline.errors import InputError
from pipeline.formats.layout import summary_table_path
from pipeline.formats.storage import resolve

ImageId = str | int


@dataclass(frozen=True, slots=True)
class Hit:
    """One ranked image: ``score`` is the cosine similarity to the query, in [-1, 1]."""

    image_id: ImageId
    shard: int
    row: int
    score: float


def top_k(output: str, query_d: np.ndarray, k: int = 50, where: Sequence[Clause] = ()) -> list[Hit]:
    """The ``k`` images most similar to ``query_d``, best first, among those passing ``where``.

    Args:
        output: a run's output folder, labelled with ``--embeddings``.
        query_d: ``D`` float, the query embedding (normalised here).
        k: how many to return (fewer when fewer images pass).
        where: clauses on the summary table (:func:`pipeline.curation.where.parse_where`).

    Raises:
        InputError: no embeddings, or ``query_d`` of another width than the run's.
    """
    run = open_embeddings(output)
    query = _normalised(query_d, run)
    fs, base = resolve(output)
    kept = _TopK(k)
    for part in read_shards(run):
        scores_n = part.vectors_nd @ query  # N
        rows_n = np.arange(len(scores_n))
        if where:
            summary = pq.read_table(
                f"{base}/{summary_table_path(part.shard)}", filesystem=fs, columns=SUMMARY_COLUMNS
            )
            passed = where_mask(where, part.ids, summary)
            scores_n, rows_n = scores_n[passed], rows_n[passed]
        kept.add(part.shard, rows_n, scores_n, part.ids)
    return kept.hits()


class _TopK:
    """The ``k`` best (score, shard, row) seen so far; best first, ties by run order."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.scores = np.zeros(0, np.float64)
        self.shards = np.zeros(0, np.int64)
        self.rows = np.zeros(0, np.int64)
        self.ids: list[Any] = []

    def add(
        self,
        shard: int,
        rows_n: np.ndarray,
        scores_n: np.ndarray,
        ids: pa.Array,
    ) -> None:
        """Merge a shard's candidates: ``rows_n`` (int, rows of the shard) scored ``scores_n``;
        ``ids`` the shard's ids, all rows."""
        if self.k <= 0 or not len(scores_n):
            return
        if len(scores_n) > self.k:
            # The shard's own k best (by score; rows tied at the cut are all kept, then ordered).
            cut = np.partition(scores_n, len(scores_n) - self.k)[len(scores_n) - self.k]
            chosen = scores_n >= cut
            rows_n, scores_n = rows_n[chosen], scores_n[chosen]
        scores = np.concatenate([self.scores, scores_n.astype(np.float64)])
        shards = np.concatenate([self.shards, np.full(len(rows_n), shard, np.int64)])
        rows = np.concatenate([self.rows, rows_n.astype(np.int64)])
        candidates = self.ids + ids.take(pa.array(rows_n, pa.int64())).to_pylist()
        order = np.lexsort((rows, shards, -scores))[: self.k]
        self.scores, self.shards, self.rows = scores[order], shards[order], rows[order]
        self.ids = [candidates[i] for i in order.tolist()]

    def hits(self) -> list[Hit]:
        return [
            Hit(i, int(s), int(r), float(v))
            for i, s, r, v in zip(self.ids, self.shards, self.rows, self.scores, strict=True)
        ]


def _normalised(query_d: np.ndarray, run: EmbeddedRun) -> np.ndarray:
    query = np.asarray(query_d, np.float32).reshape(-1)
    if query.shape[0] != run.dimension:
        raise InputError(
            f"The query embedding has {query.shape[0]} values but the run's embeddings have "
            f"{run.dimension}: encode the query with the run's own model."
        )
    norm = float(np.linalg.norm(query))
    if not np.isfinite(norm) or norm == 0:
        raise InputError("The query embedding is zero or not finite: nothing to compare with.")
    return query / norm
