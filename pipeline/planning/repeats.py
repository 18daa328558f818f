"""Repeated keys among a manifest's rows, found out of core: the planner's duplicate checks.

Every row's 64-bit key hash goes, with its row number, into a DuckDB table (an in-memory
database whose blocks spill to a scratch folder); DuckDB groups them under a memory limit,
spilling to that folder, so a billion rows are checked in the same few hundred megabytes as
a thousand. Image ids are hashed by DuckDB itself (``hash()``, in C++ and in parallel: the
ids' hot path); label keys and folder prefixes by :mod:`pipeline.planning.ids`, whose
hashes of prefixes equal those of the whole keys. DuckDB (a well-kept, embedded column engine) is used rather than hand-written
partitioned sorts: its aggregates and joins spill on their own. Only the hashes of suspects
come back to Python, and the planner confirms them on the keys themselves.

The scratch folder (a database file and DuckDB's spill files) is removed when the check ends.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import pyarrow as pa

SUSPECTS = 64  # repeated hashes brought back, first rows first: enough to name MAX_LISTED


@dataclass(frozen=True, slots=True)
class Scratch:
    """Where and in how much memory the out-of-core checks run.

    Attributes:
        memory_limit: DuckDB's ``memory_limit``: above it, it spills to ``folder``.
        threads: DuckDB's threads.
        folder: under which the scratch folder is made (``None``: the system's temp folder).
    """

    memory_limit: str = "384MB"
    threads: int = 2
    folder: str | None = None


_TABLES = ("ids", "labels", "folders")
_BUFFER_ROWS = 1 << 18  # rows per insert: its cost amortised, and 4 MB pinned while it runs


class HashStore:
    """Tables of ``(h, r)``: a key hash and its manifest row, for ``ids`` (image ids),
    ``labels`` (label file keys) and ``folders`` (label-folder prefixes named like a label
    file). Use as a context manager; the scratch folder goes at its end."""

    def __init__(self, scratch: Scratch | None = None) -> None:
        import duckdb  # here: workers import the planner's module for read_shard, not this

        scratch = scratch or Scratch()
        self.folder = tempfile.mkdtemp(prefix="gclip-plan-", dir=scratch.folder)
        self._db = duckdb.connect(":memory:")  # no log or checkpoint: its blocks spill
        spill = os.path.join(self.folder, "spill").replace("'", "''")
        self._db.execute(f"SET temp_directory = '{spill}'")
        self._db.execute(f"SET memory_limit = '{scratch.memory_limit}'")
        self._db.execute(f"SET threads = {int(scratch.threads)}")
        self._db.execute("SET preserve_insertion_order = false")
        self._db.execute("SET enable_progress_bar = false")
        for table in _TABLES:
            self._db.execute(f"CREATE TABLE {table} (h UBIGINT, r BIGINT)")
        self._buffers: dict[str, list[tuple[pa.Array, np.ndarray]]] = {t: [] for t in _TABLES}
        self._buffered = dict.fromkeys(_TABLES, 0)
        self.added = dict.fromkeys(_TABLES, 0)

    def __enter__(self) -> HashStore:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def add_ids(self, ids: pa.Array, first: int) -> None:
        """Append image ids (no nulls, strings or integers) of the rows from ``first``;
        DuckDB hashes them."""
        canonical = pa.large_string() if pa.types.is_string(ids.type) else ids.type
        canonical = pa.int64() if pa.types.is_integer(ids.type) else canonical
        keys = ids if ids.type == canonical else ids.cast(canonical)
        self._append("ids", keys, first + np.arange(len(ids), dtype=np.int64))

    def add(self, table: str, hashes: np.ndarray, rows: np.ndarray) -> None:
        """Append ``N`` uint64 ``hashes`` of the keys of manifest ``rows`` (``N`` int64)."""
        self._append(table, pa.array(hashes, pa.uint64()), rows)

    def any_repeated(self, table: str) -> bool:
        """Whether some hash is held by several rows (the cheap question, asked first)."""
        self._insert(table)
        found = self._db.execute(
            f"SELECT count(*) FROM (SELECT h FROM {table} GROUP BY h HAVING count(*) > 1)"
        ).fetchall()
        return bool(found[0][0])

    def repeated(self, table: str, skip: int = 0) -> np.ndarray:
        """Hashes held by several rows, ordered by their first row: at most
        :data:`SUSPECTS` of them, after the first ``skip``; as uint64."""
        self._insert(table)
        found = self._db.execute(
            f"SELECT h FROM {table} GROUP BY h HAVING count(*) > 1 "
            f"ORDER BY min(r), h LIMIT {SUSPECTS} OFFSET {int(skip)}"
        ).fetchnumpy()["h"]
        return np.asarray(found, dtype=np.uint64)

    def rows_of(self, table: str, hashes: np.ndarray) -> np.ndarray:
        """Sorted int64 rows of ``table`` whose hash is one of ``hashes`` (a few)."""
        self._insert(table)
        self._db.register("wanted", pa.table({"h": pa.array(hashes, pa.uint64())}))
        try:
            found = self._db.execute(
                f"SELECT DISTINCT t.r FROM {table} t SEMI JOIN wanted w ON t.h = w.h ORDER BY t.r"
            ).fetchnumpy()["r"]
        finally:
            self._db.unregister("wanted")
        return np.asarray(found, dtype=np.int64)

    def folder_suspects(self) -> tuple[np.ndarray, np.ndarray]:
        """``(hashes, rows)`` of the ``folders`` rows whose hash is also a label file's."""
        self._insert("labels")
        self._insert("folders")
        found = self._db.execute(
            "SELECT DISTINCT h, r FROM folders SEMI JOIN labels USING (h) ORDER BY r"
        ).fetchnumpy()
        return (
            np.asarray(found["h"], dtype=np.uint64),
            np.asarray(found["r"], dtype=np.int64),
        )

    def _append(self, table: str, keys: pa.Array, rows: np.ndarray) -> None:
        if not len(keys):
            return
        self._buffers[table].append((keys, rows))
        self._buffered[table] += len(keys)
        self.added[table] += len(keys)
        if self._buffered[table] >= _BUFFER_ROWS:
            self._insert(table)

    def _insert(self, table: str) -> None:
        pieces = self._buffers[table]
        if not pieces:
            return
        batch = pa.table(
            {
                "k": pa.chunked_array([k for k, _ in pieces]),
                "r": pa.array(np.concatenate([r for _, r in pieces]), pa.int64()),
            }
        )
        hashed = "hash(k)" if table == "ids" else "k"
        self._db.register("batch", batch)
        try:
            self._db.execute(f"INSERT INTO {table} SELECT {hashed}, r FROM batch")
        finally:
            self._db.unregister("batch")
        self._buffers[table] = []
        self._buffered[table] = 0
