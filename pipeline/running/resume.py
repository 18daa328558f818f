"""Where a run stands before it starts: the plan against the previous one, and the ledger
reconciled with the shards' markers (:mod:`pipeline.formats.progress`, the one home of "is
this shard done"). Reads only, but for damaged ledger files and markers, which are moved
aside; the coordinator persists the result."""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from pipeline.formats.ledger import ShardEntry, ShardState
from pipeline.formats.progress import read_progress, reconcile
from pipeline.formats.shard_files import read_marker
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest
from pipeline.planning.plan import Plan, plan_shards


def plan_with_previous(
    storage: Storage, manifest: Manifest, shard_size: int, label_files: bool = False
) -> tuple[Plan, dict[int, ShardEntry]]:
    """The plan (the previous one kept where its rows are unchanged) and an entry per shard.

    Each planned shard's entry is reconciled with its marker; failed shards get a new
    chance (their attempts start again). A listing of the markers and the ledger's few files
    are all that is read, plus the markers being adopted.
    """
    progress = read_progress(storage, repair=True)
    known = progress.entries
    finished = {e.shard for e in progress.done} | set(progress.unplanned)
    previous = [e.descriptor for e in known.values()]
    plan = plan_shards(manifest, shard_size, previous, finished, label_files)
    entries: dict[int, ShardEntry] = {}
    for shard in plan.shards:
        entry = known.get(shard.index) or ShardEntry.planned(shard)
        entry = reconcile(
            entry, shard.index in finished, partial(read_marker, storage, shard.index)
        )
        if entry.state == ShardState.FAILED:
            entry = replace(entry, state=ShardState.PENDING, attempts=0)
        entries[shard.index] = entry
    return plan, entries
