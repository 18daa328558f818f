"""Where a run stands before it starts: the plan against the previous one, and the ledger
reconciled with the shards' markers (:mod:`pipeline.formats.progress`, the one home of "is
this shard done"). Reads only, but for damaged ledger files and markers, which are moved
aside; the coordinator persists the result.

The entries come back as :class:`PlannedEntries`, a mapping over every planned shard that
holds objects only for the shards the ledger or a marker knows: a fresh plan of four million
shards is four million implicit ``pending`` entries, made when one is read.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import replace
from functools import partial

import numpy as np

from pipeline.formats.ledger import ShardEntry, ShardState
from pipeline.formats.progress import read_progress, reconcile
from pipeline.formats.shard_files import read_marker
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest
from pipeline.planning.plan import Plan, plan_shards
from pipeline.planning.shard_table import ShardTable


class PlannedEntries(Mapping[int, ShardEntry]):
    """An entry per planned shard, by index: those in ``known``, else a fresh ``pending``
    one (:meth:`ShardEntry.planned`), made when it is read.

    Args:
        shards: the plan's shards.
        known: entries of planned shards that the ledger or a marker knows.
    """

    def __init__(self, shards: ShardTable, known: dict[int, ShardEntry]) -> None:
        self.shards = shards
        self.known = known

    def __getitem__(self, index: int) -> ShardEntry:
        entry = self.known.get(index)
        return entry if entry is not None else ShardEntry.planned(self.shards.by_index(index))

    def __iter__(self) -> Iterator[int]:
        return iter(self.shards.shard.tolist())

    def __len__(self) -> int:
        return len(self.shards)

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and bool(self.shards.positions(np.array([index]))[0] >= 0)

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


def plan_with_previous(
    storage: Storage, manifest: Manifest, shard_size: int, label_files: bool = False
) -> tuple[Plan, PlannedEntries]:
    """The plan (the previous one kept where its rows are unchanged) and an entry per shard.

    Each planned shard the ledger or a marker knows is reconciled with its marker (and kept
    as an object if it is more than a fresh ``pending`` entry); failed
    shards get a new chance (their attempts start again). A listing of the markers and the
    ledger's few files are all that is read, plus the markers being adopted.
    """
    progress = read_progress(storage, repair=True)
    known = progress.entries
    finished = {e.shard for e in progress.done} | set(progress.unplanned)
    previous = ShardTable.from_shards(
        (e.descriptor for e in known.values()), [f.uri for f in manifest.files]
    )
    plan = plan_shards(manifest, shard_size, previous, finished, label_files)
    touched = np.array(sorted(known.keys() | progress.unplanned.keys()), np.int64)
    planned = touched[plan.shards.positions(touched) >= 0]
    entries: dict[int, ShardEntry] = {}
    for index in planned.tolist():
        entry = known.get(index) or ShardEntry.planned(plan.shards.by_index(index))
        entry = reconcile(entry, index in finished, partial(read_marker, storage, index))
        if entry.state == ShardState.FAILED:
            entry = replace(entry, state=ShardState.PENDING, attempts=0)
        fresh = entry.state == ShardState.PENDING and entry == ShardEntry.planned(entry.descriptor)
        if not fresh:  # a fresh one is implicit: no object kept
            entries[index] = entry
    return plan, PlannedEntries(plan.shards, entries)
