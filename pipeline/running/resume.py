"""Where a run stands before it starts: the plan against the previous one, and the ledger
reconciled with the shards' markers (:mod:`pipeline.formats.progress`, the one home of "is
this shard done"). Reads only, but for damaged ledger files and markers, which are moved
aside; the coordinator persists the result.

The entries come back as :class:`~pipeline.formats.ledger.PlannedEntries`, a mapping over
every planned shard that holds objects only for the shards the ledger or a marker knows: a
fresh plan of four million shards is four million implicit ``pending`` entries, made when one
is read. The previous plan comes from the ledger as columns too (its fresh rows are never
objects).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

import numpy as np

from pipeline.formats.ledger import PlannedEntries, ShardEntry, ShardState
from pipeline.formats.progress import read_progress, reconcile
from pipeline.formats.shard_files import read_marker
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest
from pipeline.planning.plan import Plan, plan_shards

__all__ = ["PlannedEntries", "plan_with_previous"]


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
    known = progress.entries.known  # the previous plan's other shards are fresh: columns only
    finished = {e.shard for e in progress.done} | set(progress.unplanned)
    plan = plan_shards(manifest, shard_size, progress.entries.shards, finished, label_files)
    touched = np.array(sorted(known.keys() | progress.unplanned.keys()), np.int64)
    planned = touched[plan.shards.positions(touched) >= 0]
    entries: dict[int, ShardEntry] = {}
    for index in planned.tolist():
        entry = known.get(index) or ShardEntry.planned(plan.shards.by_index(index))
        entry = reconcile(entry, index in finished, partial(read_marker, storage, index))
        if entry.state == ShardState.FAILED:
            entry = replace(entry, state=ShardState.PENDING, attempts=0)
        if not entry.fresh:  # a fresh one is implicit: no object kept
            entries[index] = entry
    return plan, PlannedEntries(plan.shards, entries)
