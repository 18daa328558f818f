"""A plan's shards as columns: a few bytes a shard, read as :class:`Shard` objects on demand.

A billion-row manifest plans into four million shards; as Python objects they would take
gigabytes on the driver, as columns (index, file, start, count, first_id, a 32-byte digest)
about 70 bytes each. :class:`ShardTable` is a ``Sequence[Shard]``: the dispatcher, the ledger
and the tests index and iterate it as they did the tuple of shards it replaces, and each
:class:`Shard` is made when it is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import overload

import numpy as np

from pipeline.formats.descriptors import Shard


class ShardTable(Sequence[Shard]):
    """Shards sorted by index, held as numpy columns.

    Args:
        files: the manifest files the ``file`` column points into.
        shard: ``S`` int64 shard indices (a :class:`Shard`'s ``index``), ascending.
        file: ``S`` int32 positions into ``files``.
        start, size, first_id: ``S`` int64 each (``size``: a :class:`Shard`'s ``count``;
            the names differ from the Shard's as ``index`` and ``count`` are methods of
            every ``Sequence``).
        digest_32: ``S x 32`` uint8, the raw sha256 of each shard's ids (the ``Shard``'s
            ``digest`` is its hex text).
    """

    __slots__ = ("digest_32", "file", "files", "first_id", "shard", "size", "start")

    def __init__(
        self,
        files: Sequence[str],
        shard: np.ndarray,
        file: np.ndarray,
        start: np.ndarray,
        size: np.ndarray,
        first_id: np.ndarray,
        digest_32: np.ndarray,
    ) -> None:
        self.files = tuple(files)
        self.shard = np.asarray(shard, dtype=np.int64)
        self.file = np.asarray(file, dtype=np.int32)
        self.start = np.asarray(start, dtype=np.int64)
        self.size = np.asarray(size, dtype=np.int64)
        self.first_id = np.asarray(first_id, dtype=np.int64)
        self.digest_32 = np.asarray(digest_32, dtype=np.uint8).reshape(-1, 32)

    @classmethod
    def empty(cls, files: Sequence[str] = ()) -> ShardTable:
        none = np.zeros(0, np.int64)
        return cls(files, none, none, none, none, none, np.zeros((0, 32), np.uint8))

    @classmethod
    def from_shards(cls, shards: Iterable[Shard], files: Sequence[str] = ()) -> ShardTable:
        """Columns of ``shards`` (any order; sorted by index here). Files not in ``files``
        are appended to it."""
        listed = list(shards)
        names = list(files)
        where = {name: k for k, name in enumerate(names)}
        for shard in listed:
            if shard.file not in where:
                where[shard.file] = len(names)
                names.append(shard.file)
        digests = b"".join(bytes.fromhex(s.digest) for s in listed)
        table = cls(
            names,
            np.array([s.index for s in listed], np.int64),
            np.array([where[s.file] for s in listed], np.int32),
            np.array([s.start for s in listed], np.int64),
            np.array([s.count for s in listed], np.int64),
            np.array([s.first_id for s in listed], np.int64),
            np.frombuffer(digests, np.uint8).reshape(-1, 32),
        )
        return table.take(np.argsort(table.shard, kind="stable"))

    def __len__(self) -> int:
        return len(self.shard)

    @overload
    def __getitem__(self, k: int) -> Shard: ...

    @overload
    def __getitem__(self, k: slice) -> ShardTable: ...

    def __getitem__(self, k: int | slice) -> Shard | ShardTable:
        if isinstance(k, slice):
            return self.take(np.arange(len(self))[k])
        return Shard(
            int(self.shard[k]),
            self.files[int(self.file[k])],
            int(self.start[k]),
            int(self.size[k]),
            int(self.first_id[k]),
            self.digest_32[k].tobytes().hex(),
        )

    def __iter__(self) -> Iterator[Shard]:
        step = 1 << 16  # a block of columns to Python at a time: fast, and bounded
        for lo in range(0, len(self), step):
            block = self.take(np.arange(lo, min(lo + step, len(self))))
            columns = zip(
                block.shard.tolist(),
                block.file.tolist(),
                block.start.tolist(),
                block.size.tolist(),
                block.first_id.tolist(),
                (d.hex() for d in _rows_bytes(block.digest_32)),
                strict=True,
            )
            for index, file, start, count, first_id, digest in columns:
                yield Shard(index, self.files[file], start, count, first_id, digest)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ShardTable):
            return self.same_as(other)
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable columns

    def __repr__(self) -> str:
        return f"ShardTable({len(self)} shards, {self.images} images)"

    @property
    def images(self) -> int:
        return int(self.size.sum())

    def take(self, rows: np.ndarray) -> ShardTable:
        """The shards at positions ``rows`` (an int array, or a boolean mask)."""
        return ShardTable(
            self.files,
            self.shard[rows],
            self.file[rows],
            self.start[rows],
            self.size[rows],
            self.first_id[rows],
            self.digest_32[rows],
        )

    def positions(self, indices: np.ndarray) -> np.ndarray:
        """Positions of the given shard indices in the table; ``-1`` where there is none."""
        indices = np.asarray(indices, dtype=np.int64)
        at = np.searchsorted(self.shard, indices)
        found = at < len(self.shard)
        found[found] = self.shard[at[found]] == indices[found]
        return np.where(found, at, -1)

    def by_index(self, index: int) -> Shard:
        """The shard numbered ``index``.

        Raises:
            KeyError: no shard has that index.
        """
        at = int(self.positions(np.array([index]))[0])
        if at < 0:
            raise KeyError(index)
        return self[at]

    def same_as(self, other: ShardTable) -> bool:
        """Equal shards, column by column (the files compared by name)."""
        if len(self) != len(other):
            return False
        mine: list[str] = [self.files[k] for k in self.file.tolist()]
        theirs: list[str] = [other.files[k] for k in other.file.tolist()]
        return bool(
            mine == theirs
            and all(
                np.array_equal(getattr(self, c), getattr(other, c))
                for c in ("shard", "start", "size", "first_id", "digest_32")
            )
        )


def _rows_bytes(digest_32: np.ndarray) -> list[bytes]:
    data = np.ascontiguousarray(digest_32).tobytes()
    return [data[k : k + 32] for k in range(0, len(data), 32)]
