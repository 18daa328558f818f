"""The durable ledger: a compacted state plus append-only segments, read in a few requests.

``OUTPUT/ledger/state-GGGGGG.parquet`` holds every planned shard's entry (its descriptor and
progress: a row per shard, by index, of the schema :data:`_SCHEMA`) as of generation G;
``segment-GGGGGG-SSSSSS.jsonl`` files hold the entries written since, in order. Reading is
one listing, the newest state and its segments (fetched at once), however many shards there
are. The coordinator batches entries into a segment every few seconds; compaction (a new
state, then the older files deleted) happens when a run starts and ends, and every
``segments_per_state`` segments.

Only the coordinator writes here, and a shard's outputs are complete before the ledger hears
of them: entries lost with an unflushed segment are recovered on resume from the shards'
marker files, so a crash never loses or repeats finished work. For the same reason a damaged
ledger file (a truncated state, a garbage segment) loses nothing that matters: readers skip it
and name it (:attr:`Ledger.damaged`), and the driver moves it aside to ``damaged/ledger/``
before it resumes, the markers standing in for what it held.

In memory the entries are a :class:`PlannedEntries`: the plan as columns (a
:class:`~pipeline.planning.shard_table.ShardTable`) and objects only for the shards that are
more than a fresh ``pending`` entry, so four million planned shards cost their columns, not
four million objects. States are written and read column-wise, a block of rows at a time.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.formats.descriptors import Shard
from pipeline.formats.layout import DAMAGED, LEDGER, ledger_segment_path, ledger_state_path
from pipeline.formats.storage import Storage
from pipeline.planning.shard_table import ShardTable

log = logging.getLogger(__name__)


class ShardState(StrEnum):
    """Where a shard stands. ``done`` means its marker is in place (see
    :func:`pipeline.formats.progress.reconcile`, the one home of that rule)."""

    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


DAMAGED_LEDGER = f"{DAMAGED}/{LEDGER}"  # where the driver moves damaged ledger files
_STATE = re.compile(r"state-(\d{6})\.parquet$")
_SEGMENT = re.compile(r"segment-(\d{6})-(\d{6})\.jsonl$")
_DICTS = ("retries", "retry_nodes", "failures_by_error")  # held as JSON text in the state's Parquet


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """What the ledger knows of one shard: its descriptor, then its progress.

    Attributes:
        shard, file, start, count, first_id, digest: the :class:`Shard` descriptor.
        attempts: attempts started (one given back when a shard was only interrupted).
        seconds: the finished attempt's stages, summed; ``host_seconds`` of which reading,
            decoding, encoding and writing.
        annotations: annotations written, when done.
        failures_by_error: failed images by error class, when done.
        retries: retried attempts by cause: ``died`` (worker lost), ``oom``, ``timeout``,
            ``disk_full``, ``node_lost``.
        retry_nodes: the same retries by node (host, and Ray node) and then cause, where the
            executor knew the node the attempt ran on.
        node: the model worker that labelled the shard (host, and Ray node), when done.
        error: the last error, as ``"Class: message"``.
        traceback: the traceback of a failed shard, when there is one.
    """

    shard: int
    file: str
    start: int
    count: int
    first_id: int
    digest: str
    state: ShardState = ShardState.PENDING
    attempts: int = 0
    images_done: int = 0
    images_failed: int = 0
    annotations: int = 0
    failures_by_error: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    host_seconds: float = 0.0
    retries: dict[str, int] = field(default_factory=dict)
    retry_nodes: dict[str, dict[str, int]] = field(default_factory=dict)
    node: str = ""
    error: str | None = None
    traceback: str | None = None
    updated: str = ""

    @classmethod
    def planned(cls, shard: Shard) -> ShardEntry:
        return cls(shard.index, shard.file, shard.start, shard.count, shard.first_id, shard.digest)

    @property
    def descriptor(self) -> Shard:
        return Shard(self.shard, self.file, self.start, self.count, self.first_id, self.digest)

    @property
    def fresh(self) -> bool:
        """Nothing is known of the shard but its descriptor (it need not be kept)."""
        return self.state == ShardState.PENDING and self == ShardEntry.planned(self.descriptor)


class PlannedEntries(MutableMapping[int, ShardEntry]):
    """An entry per planned shard, by index: those in ``known``, else a fresh ``pending``
    one (:meth:`ShardEntry.planned`), made when it is read. An entry set is kept in
    ``known``; one of a shard outside ``shards`` adds its descriptor there (rare: a copy).

    Args:
        shards: the plan's shards.
        known: entries of planned shards known beyond their descriptor (the ledger's or a
            marker's: more than a fresh ``pending`` entry), each shard's in ``shards`` too.
    """

    def __init__(self, shards: ShardTable, known: dict[int, ShardEntry] | None = None) -> None:
        self.shards = shards
        self.known = {} if known is None else known

    @classmethod
    def of(cls, entries: Mapping[int, ShardEntry]) -> PlannedEntries:
        """``entries`` (any mapping) as columns, those more than fresh kept as objects."""
        if isinstance(entries, PlannedEntries):
            return cls(entries.shards, dict(entries.known))
        listed = list(entries.values())
        shards = ShardTable.from_shards(e.descriptor for e in listed)
        return cls(shards, {e.shard: e for e in listed if not e.fresh})

    def __getitem__(self, index: int) -> ShardEntry:
        entry = self.known.get(index)
        return entry if entry is not None else ShardEntry.planned(self.shards.by_index(index))

    def __setitem__(self, index: int, entry: ShardEntry) -> None:
        if index not in self.known and index not in self:
            self.shards = _union(self.shards, ShardTable.from_shards([entry.descriptor]))
        self.known[index] = entry

    def __delitem__(self, index: int) -> None:
        at = int(self.shards.positions(np.array([index]))[0])
        if at < 0:
            raise KeyError(index)
        keep = np.ones(len(self.shards), bool)
        keep[at] = False
        self.shards = self.shards.take(keep)
        self.known.pop(index, None)

    def __iter__(self) -> Iterator[int]:
        return iter(self.shards.shard.tolist())

    def __len__(self) -> int:
        return len(self.shards)

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int | np.integer):
            return False
        return bool(self.shards.positions(np.array([index]))[0] >= 0)

    def values(self) -> Iterator[ShardEntry]:  # type: ignore[override]
        known = self.known
        for shard in self.shards:
            entry = known.get(shard.index)
            yield entry if entry is not None else ShardEntry.planned(shard)

    def items(self) -> Iterator[tuple[int, ShardEntry]]:  # type: ignore[override]
        return zip(self.shards.shard.tolist(), self.values(), strict=True)

    def done(self) -> list[int]:
        """Indices of the done shards, in order (only known entries can be done)."""
        return sorted(i for i, e in self.known.items() if e.state == ShardState.DONE)

    def to_run(self, again: Collection[int] = ()) -> ShardTable:
        """The shards left to run, in index order: those not done, and those in ``again``."""
        finished = [i for i in self.done() if i not in again]
        keep = np.ones(len(self.shards), bool)
        keep[self.shards.positions(np.array(finished, np.int64))] = False
        return self.shards.take(keep)


def _union(shards: ShardTable, more: ShardTable) -> ShardTable:
    """``shards`` with ``more`` (whose indices replace theirs), sorted by index."""
    files = list(shards.files) + [f for f in more.files if f not in shards.files]
    where = np.array([files.index(f) for f in more.files] or [0], np.int32)
    mine = shards.take(np.isin(shards.shard, more.shard, invert=True))
    both = ShardTable(
        files,
        np.concatenate([mine.shard, more.shard]),
        np.concatenate([mine.file, where[more.file]]),
        np.concatenate([mine.start, more.start]),
        np.concatenate([mine.size, more.size]),
        np.concatenate([mine.first_id, more.first_id]),
        np.concatenate([mine.digest_32, more.digest_32]),
    )
    return both.take(np.argsort(both.shard, kind="stable"))


_NUMBERS = ("start", "size", "first_id")


_INT, _TEXT = pa.int64(), pa.string()
_SCHEMA = pa.schema(
    [
        *((name, _INT) for name in ("shard", "start", "count", "first_id")),
        ("file", _TEXT),
        ("digest", _TEXT),
        ("state", _TEXT),
        *((name, _INT) for name in ("attempts", "images_done", "images_failed", "annotations")),
        ("failures_by_error", _TEXT),
        ("seconds", pa.float64()),
        ("host_seconds", pa.float64()),
        ("retries", _TEXT),
        ("retry_nodes", _TEXT),
        ("node", _TEXT),
        ("error", _TEXT),
        ("traceback", _TEXT),
        ("updated", _TEXT),
    ]
)


class Ledger:
    """The run's shard entries, in memory (:attr:`entries`, a :class:`PlannedEntries`) and
    on storage.

    Args:
        storage: the run's output folder.
        flush_s: at most this long between an entry's write and its segment.
        segments_per_state: segments written before the state is compacted again.
        guard: called before every write to storage; raises if this process may no longer
            write there (the driver passes its lease's ``verify``).
    """

    def __init__(
        self,
        storage: Storage,
        flush_s: float = 5.0,
        segments_per_state: int = 64,
        guard: Callable[[], None] = lambda: None,
    ) -> None:
        self._guard = guard
        self._storage = storage
        self._flush_s = flush_s
        self._segments_per_state = segments_per_state
        self.entries = PlannedEntries(ShardTable.empty())
        self._generation = 0
        self._sequence = 0
        self._pending: list[ShardEntry] = []
        self._flushed = time.monotonic()
        self.damaged: dict[str, str] = {}

    def read(self, repair: bool = False) -> PlannedEntries:
        """Load the newest state and its segments (a few requests); return the entries.

        A file that cannot be read as written is skipped and named in :attr:`damaged` (path
        -> problem); with ``repair`` (the driver, before it resumes) it is also moved to
        ``damaged/ledger/``, so the next compaction does not build on it.
        """
        states, segments = {}, {}
        for path in self._storage.list(LEDGER):
            if match := _STATE.search(path):
                states[int(match[1])] = path
            elif match := _SEGMENT.search(path):
                segments[(int(match[1]), int(match[2]))] = path
        self._generation = max(states, default=0)
        self.damaged = {}
        entries = PlannedEntries(ShardTable.empty())
        if states:
            path = states[self._generation]
            try:
                entries = _state_entries(self._storage.read(path))
            except (pa.ArrowException, ValueError, TypeError, KeyError, OSError) as err:
                self.damaged[path] = _problem(err)
        mine = sorted(k for k in segments if k[0] == self._generation)
        with ThreadPoolExecutor(max_workers=16) as pool:
            texts = list(pool.map(lambda k: self._storage.read(segments[k]), mine))
        for key, text in zip(mine, texts, strict=True):
            try:
                lines = [_entry(json.loads(line)) for line in text.decode().splitlines()]
            except (ValueError, TypeError, KeyError) as err:
                self.damaged[segments[key]] = _problem(err)
                continue
            _apply(entries, lines)
        self._sequence = mine[-1][1] if mine else 0
        for path, problem in self.damaged.items():
            log.warning(
                "%s is damaged (%s); the shards' markers stand in for it%s",
                self._storage.uri(path),
                problem,
                ", moved to " + self._storage.uri(DAMAGED_LEDGER) if repair else "",
            )
            if repair:
                self._storage.write_atomic(
                    f"{DAMAGED_LEDGER}/{path.rsplit('/', 1)[1]}", self._storage.read(path)
                )
                self._storage.delete(path)
        self.entries = entries
        return PlannedEntries(entries.shards, dict(entries.known))

    def compact(self, entries: Mapping[int, ShardEntry] | None = None) -> None:
        """Write every entry (``entries``, any mapping, replace the known ones) as a new
        state; delete the files it supersedes."""
        self._guard()
        self._pending.clear()
        if entries is not None:
            self.entries = PlannedEntries.of(entries)
        self._generation, self._sequence = self._generation + 1, 0
        with self._storage.open_atomic(ledger_state_path(self._generation)) as stream:
            _write_state(self.entries, stream)  # streamed, a block of rows at a time
        stale = [p for p in self._storage.list(LEDGER) if p != ledger_state_path(self._generation)]
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(self._storage.delete, stale))

    def write(self, entry: ShardEntry, **changes: Any) -> ShardEntry:
        """Record ``entry`` with ``changes`` (time-stamped); it reaches storage with the next
        segment."""
        updated = datetime.now(UTC).isoformat(timespec="seconds")
        entry = replace(entry, **changes, updated=updated)
        self.entries[entry.shard] = entry
        self._pending.append(entry)
        if time.monotonic() - self._flushed >= self._flush_s:
            self.flush()
        return entry

    def flush(self) -> None:
        """Write the pending entries as one segment (or compact, every so many segments)."""
        self._flushed = time.monotonic()
        if not self._pending:
            return
        self._guard()
        if self._sequence >= self._segments_per_state:
            self.compact()
            return
        self._sequence += 1
        text = "".join(json.dumps(_plain(e), separators=(",", ":")) + "\n" for e in self._pending)
        self._storage.write_atomic(
            ledger_segment_path(self._generation, self._sequence), text.encode()
        )
        self._pending.clear()


_NAMES = tuple(f.name for f in fields(ShardEntry))
_FIELDS = frozenset(_NAMES)
# Fields added since the format began, and their value in older files (never mutated: an
# entry's dicts are replaced whole, as entries are frozen).
_ADDED: dict[str, Any] = {"node": "", "retry_nodes": {}}


def _apply(entries: PlannedEntries, lines: list[ShardEntry]) -> None:
    """Segment entries over ``entries``; a shard outside its plan (or planned otherwise)
    brings its descriptor into the columns."""
    if not lines:
        return
    latest = {entry.shard: entry for entry in lines}
    more = ShardTable.from_shards(e.descriptor for e in latest.values())
    table = entries.shards
    at = table.positions(more.shard)
    differ = at < 0
    found, there = ~differ, at[~differ]
    if found.any():
        mine = np.array(table.files, object)[table.file[there]]
        same = mine == np.array(more.files, object)[more.file[found]]
        same &= (table.digest_32[there] == more.digest_32[found]).all(axis=1)
        for column in ("shard", *_NUMBERS):
            same &= getattr(table, column)[there] == getattr(more, column)[found]
        differ[found] = ~same
    if differ.any():
        entries.shards = _union(table, more.take(differ))
    entries.known.update(latest)


_BLOCK = 1 << 18  # rows of a state written or read at a time: memory stays bounded
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)
_NIBBLE = np.full(256, 255, np.uint8)
_NIBBLE[_HEX] = np.arange(16, dtype=np.uint8)
# A fresh entry's progress columns (every field after the descriptor's).
_FRESH: dict[str, Any] = {
    "state": ShardState.PENDING.value,
    **dict.fromkeys(("attempts", "images_done", "images_failed", "annotations"), 0),
    **dict.fromkeys(("seconds", "host_seconds"), 0.0),
    **dict.fromkeys(_DICTS, "{}"),
    "node": "",
    "error": None,
    "traceback": None,
    "updated": "",
}


def _write_state(entries: PlannedEntries, sink: BinaryIO) -> None:
    """``entries`` as a state's Parquet, by shard index: the descriptor columns from the
    plan's columns, the progress columns a fresh entry's but for the known entries' rows."""
    table = entries.shards
    indices = np.array(sorted(entries.known), np.int64)
    at = table.positions(indices)
    if (at < 0).any():
        raise ValueError(f"entries of shards outside the plan: {indices[at < 0][:5].tolist()}")
    files = pa.array(table.files, _TEXT)
    with pq.ParquetWriter(sink, _SCHEMA, compression="zstd") as writer:
        for lo in range(0, len(table), _BLOCK):
            hi = min(lo + _BLOCK, len(table))
            known = at[(at >= lo) & (at < hi)]
            fresh = np.ones(hi - lo, bool)
            fresh[known - lo] = False
            block = table.take(np.arange(lo, hi)[fresh])
            n = len(block)
            columns = {
                "shard": pa.array(block.shard),
                "start": pa.array(block.start),
                "count": pa.array(block.size),
                "first_id": pa.array(block.first_id),
                "file": files.take(pa.array(block.file)),
                "digest": _hex_text(block.digest_32),
            }
            for name, value in _FRESH.items():
                columns[name] = pa.array([value], _SCHEMA.field(name).type).take(
                    pa.array(np.zeros(n, np.int32))
                )
            rows = [_row(entries.known[i]) for i in table.shard[known].tolist()]
            both = pa.concat_tables(
                [
                    pa.Table.from_pydict(columns, schema=_SCHEMA),
                    pa.Table.from_pylist(rows, schema=_SCHEMA),
                ]
            )
            order = np.argsort(np.concatenate([np.flatnonzero(fresh), known - lo]), kind="stable")
            writer.write_table(both.take(pa.array(order)))


def _hex_text(digest_32: np.ndarray) -> pa.Array:
    """Each row's 32 bytes as 64 lowercase hex characters (a :class:`Shard`'s digest)."""
    n = len(digest_32)
    chars = np.empty((n, 64), np.uint8)
    chars[:, 0::2] = _HEX[digest_32 >> 4]
    chars[:, 1::2] = _HEX[digest_32 & 15]
    offsets = np.arange(0, 64 * (n + 1), 64, dtype=np.int32)
    return pa.Array.from_buffers(_TEXT, n, [None, pa.py_buffer(offsets), pa.py_buffer(chars)])


def _hex_bytes(digest: pa.Array) -> np.ndarray:
    """``N x 32`` bytes of a column of 64-character hex digests.

    Raises:
        ValueError: a digest is missing or not 64 lowercase hex characters.
    """
    n = len(digest)
    if digest.null_count:
        raise ValueError("a shard without a digest")
    buffers = digest.buffers()
    offsets = np.frombuffer(buffers[1], np.int32)[digest.offset : digest.offset + n + 1]
    if n and (np.diff(offsets) != 64).any():
        raise ValueError("a digest that is not 64 hex characters")
    chars = np.frombuffer(buffers[2], np.uint8)[offsets[0] : offsets[-1]] if n else _HEX[:0]
    nibbles = _NIBBLE[chars].reshape(n, 64)
    if (nibbles == 255).any():
        raise ValueError("a digest that is not lowercase hex")
    return (nibbles[:, 0::2] << 4) | nibbles[:, 1::2]


def _state_entries(data: bytes) -> PlannedEntries:
    """A state's entries: its rows as columns, objects for those more than fresh."""
    state = pq.ParquetFile(io.BytesIO(data))
    names = state.schema_arrow.names
    missing = set(_SCHEMA.names) - set(names)
    if missing - _ADDED.keys() or set(names) - set(_SCHEMA.names):
        raise ValueError(f"unexpected columns {names}")
    n = state.metadata.num_rows
    files: dict[str, int] = {}
    none = np.empty(0, np.int64)  # each replaced by its own: filled in place, a block at a
    shards = ShardTable((), none, none, none, none, none, np.empty((0, 32), np.uint8))
    for name in ("shard", *_NUMBERS):  # time, so the columns are never copied whole
        setattr(shards, name, np.empty(n, np.int64))
    shards.file, shards.digest_32 = np.empty(n, np.int32), np.empty((n, 32), np.uint8)
    known: dict[int, ShardEntry] = {}
    lo = 0
    for batch in state.iter_batches(batch_size=_BLOCK):
        block = pa.Table.from_batches([batch])
        hi = lo + block.num_rows
        fresh = _fresh(block)
        known.update((e.shard, e) for e in _objects(block.filter(pa.array(~fresh))))
        for column, name in (("shard", "shard"), ("start", "start"), ("size", "count")):
            getattr(shards, column)[lo:hi] = _integers(block, name)
        shards.first_id[lo:hi] = _integers(block, "first_id")
        if block["file"].null_count:
            raise ValueError("a shard without its file")
        named = block["file"].combine_chunks().dictionary_encode()
        listed = [files.setdefault(f, len(files)) for f in named.dictionary.to_pylist()]
        where = np.array(listed or [0], np.int32)
        shards.file[lo:hi] = where[named.indices.to_numpy(zero_copy_only=False)]
        shards.digest_32[lo:hi] = _hex_bytes(block["digest"].combine_chunks())
        lo = hi
    if lo != n:
        raise ValueError(f"{lo} rows of {n}")
    shards.files = tuple(files)
    if (np.diff(shards.shard) <= 0).any():  # as written, they are sorted and unique
        shards = shards.take(np.argsort(shards.shard, kind="stable"))
        last = np.append(shards.shard[1:] != shards.shard[:-1], True)  # repeated: the last
        shards = shards.take(last)
    return PlannedEntries(shards, known)


def _integers(block: pa.Table, name: str) -> np.ndarray:
    if block[name].null_count:
        raise ValueError(f"a shard without its {name}")
    return block[name].to_numpy().astype(np.int64)


def _fresh(block: pa.Table) -> np.ndarray:
    """Rows that are fresh entries: every progress column a fresh entry's (not null)."""
    fresh = pa.array(np.ones(block.num_rows, bool))
    for name, value in _FRESH.items():
        if name not in block.column_names:
            continue  # added since: a fresh entry's value in older files
        column = block[name]
        same = pc.is_null(column) if value is None else pc.equal(column, value)
        fresh = pc.and_(fresh, pc.fill_null(same, False))
    return fresh.to_numpy(zero_copy_only=False)


def _objects(table: pa.Table) -> list[ShardEntry]:
    """An entry per row (by columns, not a dict per row; most dict fields are "{}", parsed
    without json)."""
    columns = {name: table[name].to_pylist() for name in table.schema.names}
    for name, default in _ADDED.items():
        columns.setdefault(name, [default] * table.num_rows)
    for name in _DICTS:
        columns[name] = [
            {} if v == "{}" else json.loads(v) if isinstance(v, str) else v for v in columns[name]
        ]
    states = {s.value: s for s in ShardState}
    columns["state"] = [states.get(v) or ShardState(v) for v in columns["state"]]
    ordered = [columns[f.name] for f in fields(ShardEntry)]
    return [ShardEntry(*values) for values in zip(*ordered, strict=True)]


def _problem(err: BaseException) -> str:
    return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"


def _plain(entry: ShardEntry) -> dict[str, Any]:
    """The entry's fields by name (its values are plain: no deep copy, as ``asdict`` makes,
    which was most of a segment's cost)."""
    return {name: getattr(entry, name) for name in _NAMES}


def _row(entry: ShardEntry) -> dict[str, Any]:
    row = _plain(entry)
    for name in _DICTS:
        row[name] = json.dumps(row[name], sort_keys=True) if row[name] else "{}"  # most are
    return row


def _entry(row: dict[str, Any]) -> ShardEntry:
    """An entry from a state row or a segment line; anything else raises ``ValueError``."""
    if not isinstance(row, dict) or (_FIELDS - row.keys()) - _ADDED.keys() or row.keys() - _FIELDS:
        found = sorted(row) if isinstance(row, dict) else type(row).__name__
        raise ValueError(f"not a ledger entry (fields {found})")
    values = {**_ADDED, **row}
    for name in _DICTS:
        if isinstance(values.get(name), str):
            values[name] = json.loads(values[name])
    values["state"] = ShardState(values["state"])
    return ShardEntry(**values)
