"""The durable ledger: a compacted state plus append-only segments, read in a few requests.

``OUTPUT/ledger/state-GGGGGG.parquet`` holds every planned shard's entry (its descriptor and
progress) as of generation G; ``segment-GGGGGG-SSSSSS.jsonl`` files hold the entries written
since, in order. Reading is one listing, the newest state and its segments (fetched at once),
however many shards there are. The coordinator batches entries into a segment every few
seconds; compaction (a new state, then the older files deleted) happens when a run starts and
ends, and every ``segments_per_state`` segments.

Only the coordinator writes here, and a shard's outputs are complete before the ledger hears
of them: entries lost with an unflushed segment are recovered on resume from the shards'
marker files, so a crash never loses or repeats finished work. For the same reason a damaged
ledger file (a truncated state, a garbage segment) loses nothing that matters: readers skip it
and name it (:attr:`Ledger.damaged`), and the driver moves it aside to ``damaged/ledger/``
before it resumes, the markers standing in for what it held.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.formats.descriptors import Shard
from pipeline.formats.layout import DAMAGED, LEDGER, ledger_segment_path, ledger_state_path
from pipeline.formats.storage import Storage

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
    """The run's shard entries, in memory and on storage.

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
        self.entries: dict[int, ShardEntry] = {}
        self._generation = 0
        self._sequence = 0
        self._pending: list[ShardEntry] = []
        self._flushed = time.monotonic()
        self.damaged: dict[str, str] = {}

    def read(self, repair: bool = False) -> dict[int, ShardEntry]:
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
        entries: dict[int, ShardEntry] = {}
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
            entries.update((entry.shard, entry) for entry in lines)
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
        return dict(entries)

    def compact(self, entries: dict[int, ShardEntry] | None = None) -> None:
        """Write every entry (``entries`` replace the known ones) as a new state; delete the
        files it supersedes."""
        self._guard()
        self._pending.clear()
        if entries is not None:
            self.entries = dict(entries)
        rows = [_row(e) for e in sorted(self.entries.values(), key=lambda e: e.shard)]
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), buffer, compression="zstd")
        self._generation, self._sequence = self._generation + 1, 0
        self._storage.write_atomic(ledger_state_path(self._generation), buffer.getvalue())
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


def _state_entries(data: bytes) -> dict[int, ShardEntry]:
    table = pq.read_table(io.BytesIO(data))
    missing = set(_SCHEMA.names) - set(table.schema.names)
    if missing - _ADDED.keys() or set(table.schema.names) - set(_SCHEMA.names):
        raise ValueError(f"unexpected columns {table.schema.names}")
    # By columns, not a dict per row: a state of 400k shards reads in seconds. Most dict
    # fields are "{}", parsed without json.
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
    return {values[0]: ShardEntry(*values) for values in zip(*ordered, strict=True)}


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
