"""The ledger holds the plan as columns: states written and read column-wise give the same
entries, and the same file, as the row-per-entry path they replace, and a big plan makes
objects only for the shards that are more than a fresh ``pending`` entry."""

from __future__ import annotations

import io
import json
from dataclasses import fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_dispatch_contract import Scripted

from pipeline.formats import ledger as ledger_module
from pipeline.formats.ledger import _SCHEMA, Ledger, PlannedEntries, ShardEntry, ShardState
from pipeline.formats.progress import read_progress, totals
from pipeline.formats.storage import Storage
from pipeline.planning.shard_table import ShardTable
from pipeline.running.dispatch import dispatch
from pipeline.running.executors import OutcomeKind


def table_of(n: int, seed: int = 0) -> ShardTable:
    rng = np.random.default_rng(seed)
    k = np.arange(n)
    files = [f"s3://b/part-{f}.parquet" for f in range(n // 7 + 1)]
    digests = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    return ShardTable(files, k * 2, k // 7, (k % 7) * 4, np.full(n, 4), k * 4, digests)


def mixed(shards: ShardTable) -> dict[int, ShardEntry]:
    """Every entry of ``shards``: done, failed, retried, odd dicts and None errors among them."""
    entries = {s.index: ShardEntry.planned(s) for s in shards}
    for i in list(entries)[::5]:
        entries[i] = replace(
            entries[i],
            state=ShardState.DONE,
            attempts=1,
            images_done=3,
            images_failed=1,
            annotations=7,
            failures_by_error={"OSError": 1},
            seconds=1.5,
            host_seconds=0.25,
            node="h (node n1)",
            updated="2026-01-01T00:00:00+00:00",
        )
    for i in list(entries)[1::11]:
        entries[i] = replace(
            entries[i],
            state=ShardState.FAILED,
            attempts=3,
            retries={"died": 2, "oom": 1},
            retry_nodes={"h (node n2)": {"died": 2}},
            error="RuntimeError: x",
            traceback="Traceback ...\n",
        )
    for i in list(entries)[2::13]:  # pending, but retried: more than fresh
        entries[i] = replace(entries[i], retries={"timeout": 1}, error="TimeoutError: t")
    for i in list(entries)[3::17]:  # pending with only a time stamp
        entries[i] = replace(entries[i], updated="2026-01-02T00:00:00+00:00")
    return entries


def old_state(entries: dict[int, ShardEntry]) -> bytes:
    """A state as the row-per-entry code wrote it."""
    rows = [ledger_module._row(e) for e in sorted(entries.values(), key=lambda e: e.shard)]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=_SCHEMA), buffer, compression="zstd")
    return buffer.getvalue()


def old_read(data: bytes) -> dict[int, ShardEntry]:
    """A state as the row-per-entry code read it (every row an object)."""
    table = pq.read_table(io.BytesIO(data))
    return {e.shard: e for e in ledger_module._objects(table)}


def state_bytes(storage: Storage) -> bytes:
    [path] = [p for p in storage.list("ledger") if p.endswith(".parquet")]
    return storage.read(path)


def test_a_state_round_trips_as_the_row_path_wrote_and_read_it(tmp_path):
    shards = table_of(300)
    entries = mixed(shards)
    storage = Storage(str(tmp_path / "new"))
    ledger = Ledger(storage)
    ledger.compact(PlannedEntries.of(entries))
    assert len(ledger.entries.known) < len(entries) / 2  # the fresh ones are columns only
    new = state_bytes(storage)
    # the same file content, read either way
    assert pq.read_table(io.BytesIO(new)).equals(pq.read_table(io.BytesIO(old_state(entries))))
    assert old_read(new) == entries
    read = Ledger(storage).read()
    assert dict(read.items()) == entries == old_read(old_state(entries))
    assert read.shards.same_as(shards)
    assert all(not e.fresh for e in read.known.values())
    # a state the old code wrote reads the same through the new reader
    old = Storage(str(tmp_path / "old"))
    old.write_atomic("ledger/state-000001.parquet", old_state(entries))
    assert dict(Ledger(old).read().items()) == entries
    # and a plain dict still compacts (as the tests and tools pass one)
    Ledger(storage).compact(entries)
    assert dict(Ledger(storage).read().items()) == entries


def test_an_older_state_without_the_added_columns_still_reads(tmp_path):
    entries = mixed(table_of(40))
    table = pq.read_table(io.BytesIO(old_state(entries))).drop_columns(["node", "retry_nodes"])
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage = Storage(str(tmp_path))
    storage.write_atomic("ledger/state-000001.parquet", buffer.getvalue())
    expected = {i: replace(e, node="", retry_nodes={}) for i, e in entries.items()}
    assert dict(Ledger(storage).read().items()) == expected


@pytest.mark.parametrize("digest", ["AB" * 32, "ab" * 31, "zz" * 32])
def test_a_state_with_a_digest_that_is_not_one_is_damaged(tmp_path, digest):
    shards = table_of(3)
    entries = {s.index: ShardEntry.planned(s) for s in shards}
    entries[2] = replace(entries[2], digest=digest)
    storage = Storage(str(tmp_path))
    storage.write_atomic("ledger/state-000001.parquet", old_state(entries))
    ledger = Ledger(storage)
    assert len(ledger.read()) == 0 and list(ledger.damaged) == ["ledger/state-000001.parquet"]


def test_segments_over_a_damaged_state_and_outside_the_plan_are_kept(tmp_path):
    shards = table_of(20)
    storage = Storage(str(tmp_path))
    ledger = Ledger(storage, flush_s=1e9)
    ledger.compact(PlannedEntries(shards))
    outside = ShardEntry(999, "elsewhere.parquet", 0, 4, 10_000, "0f" * 32)
    written = [ledger.write(ledger.entries[4], state=ShardState.DONE), ledger.write(outside)]
    ledger.flush()
    again = Ledger(storage).read()
    assert again[4] == written[0] and again[999] == written[1] and len(again) == 21
    assert again.shards.by_index(999) == outside.descriptor
    storage.write_atomic("ledger/state-000001.parquet", b"not parquet")
    damaged = Ledger(storage)
    assert dict(damaged.read().items()) == {4: written[0], 999: written[1]}
    assert list(damaged.damaged) == ["ledger/state-000001.parquet"]


def test_a_big_plan_makes_objects_only_for_the_known_shards(tmp_path, monkeypatch):
    shards = table_of(200_000)
    storage = Storage(str(tmp_path))
    known = {
        int(i): replace(ShardEntry.planned(shards[k]), state=ShardState.DONE, attempts=1)
        for k, i in enumerate(shards.shard.tolist())
        if k % 400 == 0
    }
    made = []
    init = ShardEntry.__init__

    def counted(self, *args, **kwargs):
        made.append(1)
        init(self, *args, **kwargs)

    monkeypatch.setattr(ShardEntry, "__init__", counted)
    ledger = Ledger(storage, flush_s=1e9)
    ledger.compact(PlannedEntries(shards, dict(known)))
    for i in shards.shard[1::1000].tolist():
        ledger.write(ledger.entries[i], state=ShardState.FAILED, error="X: y")
    ledger.flush()
    ledger.compact()
    read = Ledger(storage).read()
    progress = read_progress(storage)
    counts = totals(read)
    bound = 4 * (len(known) + 200)  # a few per known entry (written, replaced, read twice)
    assert len(made) < bound, len(made)
    assert len(read) == len(shards) and len(read.known) == len(known) + 200
    assert counts["shards"] == len(shards) and counts["shards_done"] == len(known)
    assert counts["shards_failed"] == 200
    # no markers: done entries are pending again (reconciled), the rest as the ledger says
    assert progress.states()[ShardState.PENDING] == len(shards) - 200
    assert [e.shard for e in progress.failed] == shards.shard[1::1000].tolist()
    assert read[shards.shard[7]] == ShardEntry.planned(shards[7])  # fresh, made when read


def test_dispatch_over_columns_records_every_shard(tmp_path):
    shards = table_of(30)
    ledger = Ledger(Storage(str(tmp_path)))
    ledger.compact(PlannedEntries(shards))
    index = int(shards.shard[3])
    executor = Scripted(capacity=4, script={(index, 1): OutcomeKind.DIED})
    retries = dispatch(executor, ledger.entries.to_run(), ledger, max_attempts=3, retried=set())
    ledger.flush()
    assert retries == {"died": 1}
    again = Ledger(Storage(str(tmp_path))).read()
    assert again.done() == shards.shard.tolist()
    assert again[index].attempts == 2 and again[index].retries == {"died": 1}
    assert all(again[i].images_done == again[i].count for i in again)
    assert {f.name for f in fields(ShardEntry)} == set(json.loads(json.dumps(_SCHEMA.names)))
