"""A resumed driver's entries: objects only for the shards the ledger or a marker knows, the
others implicit ``pending`` ones; the shards to run as columns."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.formats.layout import shard_path
from pipeline.formats.ledger import Ledger, ShardEntry, ShardState
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import open_manifest
from pipeline.planning.plan import plan_shards
from pipeline.running.resume import plan_with_previous


def test_entries_are_the_ledgers_where_known_and_pending_elsewhere(tmp_path):
    ids = [f"i{k:03d}" for k in range(40)]
    pq.write_table(
        pa.table({"image_id": ids, "uri": [f"{i}.jpg" for i in ids]}), tmp_path / "m.parquet"
    )
    manifest = open_manifest(str(tmp_path / "m.parquet"))
    plan = plan_shards(manifest, 4)
    storage = Storage(str(tmp_path / "out"))
    done = {1: 4, 3: 3, 7: 4}  # shard -> images labelled
    known = {
        i: replace(
            ShardEntry.planned(plan.shards.by_index(i)),
            state=ShardState.DONE,
            attempts=1,
            images_done=n,
        )
        for i, n in done.items()
    }
    known[5] = replace(
        ShardEntry.planned(plan.shards.by_index(5)),
        state=ShardState.FAILED,
        attempts=3,
        error="X: y",
    )
    Ledger(storage).compact({**{s.index: ShardEntry.planned(s) for s in plan.shards}, **known})
    for index in done:
        storage.write_atomic(shard_path(index), b"{}")  # done entries' markers are not read
    storage.delete(shard_path(7))  # a done shard whose files went missing: run it again

    again, entries = plan_with_previous(storage, manifest, 4)
    assert list(again.shards) == list(plan.shards)  # kept, and the rest planned as before
    assert again.kept == 10
    assert sorted(entries.known) == [1, 3, 5, 7] and len(entries) == len(plan.shards) == 10
    assert entries.done() == [1, 3]
    assert entries[5].state == ShardState.PENDING and entries[5].attempts == 0  # a new chance
    assert entries[7].state == ShardState.PENDING
    assert entries[0] == ShardEntry.planned(plan.shards.by_index(0))
    assert dict(entries.items()) == {i: entries[i] for i in range(10)}
    assert list(entries.values()) == [entries[i] for i in range(10)]
    assert [s.index for s in entries.to_run()] == [0, 2, 4, 5, 6, 7, 8, 9]
    assert [s.index for s in entries.to_run({3})] == [0, 2, 3, 4, 5, 6, 7, 8, 9]
    assert 9 in entries and 10 not in entries
