"""A run's image embeddings (``OUTPUT/embeddings/``), read one finished shard at a time.

Only shards whose marker is in place count (:func:`pipeline.formats.progress.read_progress`):
their files are complete, so the embeddings, summaries and annotations read beside them all
describe the same images. Memory holds one shard's vectors, never the run's.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.formats.layout import EMBEDDING_TABLES, embedding_table_path
from pipeline.formats.progress import read_progress
from pipeline.formats.run_record import require_run
from pipeline.formats.storage import Storage, resolve


@dataclass(frozen=True, slots=True)
class EmbeddingShard:
    """One shard's embeddings.

    Attributes:
        shard: the shard index.
        ids: ``N`` manifest ids (string or int64), in the shard's row order.
        vectors_nd: ``N x D`` float32, L2-normalised rows (float16 files are widened).
    """

    shard: int
    ids: pa.Array
    vectors_nd: np.ndarray


@dataclass(frozen=True, slots=True)
class EmbeddedRun:
    """The finished shards of a run that hold embeddings, and their row counts.

    Attributes:
        output: the run's output folder.
        shards: finished shard indices, in order.
        rows: ``len(shards)`` int64, embeddings per shard (from the Parquet footers).
        dimension: ``D``, the embedding width (0 when no shard has a row).
    """

    output: str
    shards: tuple[int, ...]
    rows: np.ndarray
    dimension: int

    @property
    def total(self) -> int:
        return int(self.rows.sum())

    @property
    def offsets(self) -> np.ndarray:
        """``len(shards)`` int64: the run-wide row number of each shard's first embedding."""
        return np.concatenate([[0], np.cumsum(self.rows)[:-1]]).astype(np.int64)


def open_embeddings(output: str) -> EmbeddedRun:
    """The run's finished shards and their embedding counts (footers only, no vectors read).

    Raises:
        InputError: not a run, no finished shard, or a finished shard without embeddings
            (the run was labelled without ``--embeddings``); the message names the fix.
    """
    storage = Storage(output, create=False)
    require_run(storage)
    done = read_progress(storage).done_shards
    if not done:
        raise InputError(f"{output} has no finished shard yet: nothing to search.")
    fs, base = resolve(output)
    missing = [s for s in done if not storage.exists(embedding_table_path(s))]
    if missing:
        raise InputError(
            f"{len(missing)} finished shard(s) of {output} have no {EMBEDDING_TABLES}/ file "
            f"(first: {embedding_table_path(missing[0])}): the run was labelled without "
            "--embeddings. Label into a fresh output folder with --embeddings."
        )
    rows, dimension = [], 0
    for shard in done:
        metadata = pq.read_metadata(f"{base}/{embedding_table_path(shard)}", filesystem=fs)
        rows.append(metadata.num_rows)
        if not dimension:
            dimension = metadata.schema.to_arrow_schema().field("embedding").type.list_size
    return EmbeddedRun(output, tuple(done), np.asarray(rows, np.int64), dimension)


def read_shards(run: EmbeddedRun, shards: Sequence[int] | None = None) -> Iterator[EmbeddingShard]:
    """Each of ``shards`` (default all of the run's finished ones), in order, one at a time."""
    fs, base = resolve(run.output)
    for shard in run.shards if shards is None else shards:
        table = pq.read_table(
            f"{base}/{embedding_table_path(shard)}",
            filesystem=fs,
            columns=["image_id", "embedding"],
        )
        yield EmbeddingShard(shard, table["image_id"].combine_chunks(), vectors(table, run))


def vectors(table: pa.Table, run: EmbeddedRun) -> np.ndarray:
    """``N x D`` float32 of a table's ``embedding`` column (fixed-size lists, no copy per row)."""
    column = table["embedding"].combine_chunks()
    if len(column) == 0:
        return np.zeros((0, run.dimension), np.float32)
    if column.null_count:
        raise InputError(f"{run.output}: an embedding is null; relabel the shard that holds it.")
    flat = column.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(flat.reshape(len(column), -1), dtype=np.float32)
