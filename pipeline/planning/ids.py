"""Image ids in bulk: 64-bit row hashes (to find duplicates in bounded memory) and digests of
id ranges (to notice a manifest that changed under finished shards).

Both read Arrow's buffers directly, so ten million ids take seconds and no Python object per
row. String ids are hashed over their UTF-8 bytes, integer ids over their int64 values.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

# Odd 64-bit multipliers (from splitmix64); arithmetic on uint64 arrays wraps mod 2**64.
_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_MIX_1, _MIX_2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_powers: np.ndarray = np.ones(1, dtype=np.uint64)


def is_string(array: pa.Array) -> bool:
    return bool(pa.types.is_string(array.type) or pa.types.is_large_string(array.type))


def row_hashes(array: pa.Array) -> np.ndarray:
    """A 64-bit hash per id (no nulls): the value itself for integers, a polynomial hash of
    the bytes for strings. Equal ids hash equal; different ids collide with odds near 2**-64.

    Returns:
        ``N`` uint64.
    """
    if not is_string(array):
        return np.asarray(array.cast(pa.int64()).to_numpy(zero_copy_only=False)).view(np.uint64)
    offsets, data = _string_buffers(array)
    lengths = np.diff(offsets)  # N
    starts = offsets[:-1] - offsets[0]  # N, into data
    terms = _terms(data, starts, lengths)
    sums = np.add.reduceat(np.append(terms, np.uint64(0)), starts) if len(starts) else terms
    sums = np.where(lengths > 0, sums, np.uint64(0))  # reduceat gives a neighbour for empties
    return _mix(sums ^ (lengths.astype(np.uint64) * _MULTIPLIER))


def prefixes_before(array: pa.Array, marker: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Every prefix of a string id that ``marker`` follows inside the same id.

    Args:
        array: string ids, no nulls.
        marker: the bytes after each prefix (``b".png/"``).

    Returns:
        ``(rows, lengths)``: ``P`` int64 indices into ``array`` and ``P`` int64 byte lengths,
        one pair per occurrence of ``marker``, in byte order.
    """
    offsets, data = _string_buffers(array)
    starts = offsets[:-1] - offsets[0]  # N, into data
    ends = offsets[1:] - offsets[0]
    span = len(data) - len(marker) + 1
    at = np.flatnonzero(data[: max(span, 0)] == marker[0])  # the first byte, then the rest
    for k, byte in enumerate(marker[1:], start=1):
        at = at[data[at + k] == byte]
    rows = np.searchsorted(starts, at, side="right") - 1  # an empty id shares its start
    inside = at + len(marker) <= ends[rows]
    rows, at = rows[inside], at[inside]
    return rows.astype(np.int64), (at - starts[rows]).astype(np.int64)


def prefix_hashes(array: pa.Array, rows: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """:func:`row_hashes` of the first ``lengths[k]`` bytes of string ``array[rows[k]]``,
    without building those prefixes: the polynomial hash of a prefix is a difference of
    running sums over the bytes.

    Args:
        array: string ids, no nulls.
        rows: ``P`` int64 indices into ``array``.
        lengths: ``P`` int64 byte lengths, each at most its id's length.

    Returns:
        ``P`` uint64, equal to ``row_hashes`` of the prefixes as strings.
    """
    offsets, data = _string_buffers(array)
    starts = offsets[:-1] - offsets[0]  # N, into data
    terms = _terms(data, starts, np.diff(offsets))
    running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
    first = starts[rows]
    sums = running[first + lengths] - running[first]  # wraps mod 2**64, as the sums do
    return _mix(sums ^ (lengths.astype(np.uint64) * _MULTIPLIER))


class RangeDigest:
    """sha256 of a range of ids, fed in pieces: the same digest however the range is split.

    Lengths and bytes go to separate streams, so concatenating pieces never changes what is
    hashed; integer ids feed their int64 values.
    """

    def __init__(self) -> None:
        self._lengths = hashlib.sha256()
        self._data = hashlib.sha256()
        self._kind = b""

    def update(self, array: pa.Array) -> None:
        if is_string(array):
            offsets, data = _string_buffers(array)
            self._kind = b"string"
            self._lengths.update(np.diff(offsets).astype("<i8").tobytes())
            self._data.update(data.tobytes())
        else:
            self._kind = b"int64"
            values = array.cast(pa.int64()).to_numpy(zero_copy_only=False)
            self._data.update(np.asarray(values, dtype="<i8").tobytes())

    def update_slice(self, batch: IdBatch, lo: int, hi: int) -> None:
        """:meth:`update` with ids ``lo .. hi`` of ``batch``: the same digest, without
        preparing the batch's buffers again for every slice."""
        self._kind = batch.kind
        if batch.values is not None:  # contiguous slices: hashed in place, no copy
            self._data.update(batch.values[lo:hi].data)
        else:
            self._lengths.update(batch.lengths[lo:hi].data)
            self._data.update(batch.data[batch.offsets[lo] : batch.offsets[hi]].data)

    def digest(self) -> bytes:
        """The 32 bytes of which :meth:`hexdigest` is the text (plans keep them in a column)."""
        joined = self._kind + self._lengths.digest() + self._data.digest()
        return hashlib.sha256(joined).digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


class IdBatch:
    """A batch of ids (no nulls) prepared once for :meth:`RangeDigest.update_slice`."""

    def __init__(self, array: pa.Array) -> None:
        self.values: np.ndarray | None = None
        if is_string(array):
            offsets, self.data = _string_buffers(array)
            self.kind = b"string"
            self.offsets = offsets - offsets[0]  # N + 1, into data
            self.lengths = np.diff(offsets).astype("<i8")
        else:
            self.kind = b"int64"
            values = array.cast(pa.int64()).to_numpy(zero_copy_only=False)
            self.values = np.ascontiguousarray(values, dtype="<i8")


def digest(array: pa.Array) -> str:
    """:class:`RangeDigest` of one array."""
    builder = RangeDigest()
    builder.update(array)
    return builder.hexdigest()


def _string_buffers(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``(offsets, data)`` of a (possibly sliced) string array: N + 1 int64 offsets into the
    whole data buffer, and the uint8 bytes this slice spans."""
    wide = pa.types.is_large_string(array.type)
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64 if wide else np.int32)
    offsets = offsets[array.offset : array.offset + len(array) + 1].astype(np.int64)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.empty(0)
    return offsets, data[offsets[0] : offsets[-1]].astype(np.uint8, copy=False)


def _terms(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(byte + 1) * M**position`` of every byte, its position counted inside its own id:
    an id's hash sums its bytes' terms."""
    positions = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
    powers = _power_table(int(lengths.max(initial=0)))
    return (data.astype(np.uint64) + np.uint64(1)) * powers[positions]  # len(data)


def _power_table(length: int) -> np.ndarray:
    """``M**k mod 2**64`` for ``k < length`` (grown on demand, kept between calls)."""
    global _powers
    if len(_powers) < length:
        table = np.full(length, _MULTIPLIER, dtype=np.uint64)
        table[0] = 1
        _powers = np.cumprod(table, dtype=np.uint64)
    return _powers


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole hash."""
    x = (x ^ (x >> np.uint64(30))) * _MIX_1
    x = (x ^ (x >> np.uint64(27))) * _MIX_2
    return x ^ (x >> np.uint64(31))
