"""Where a run stands before it starts: the plan against the previous one, and the ledger
reconciled with the shards' markers. Reads only; the coordinator persists the result."""

from __future__ import annotations

from dataclasses import replace

from pipeline.formats.outputs import finished_shards
from pipeline.formats.shard_files import read_marker
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest
from pipeline.planning.plan import Plan, plan_shards
from pipeline.running.ledger import DONE, FAILED, PENDING, Ledger, ShardEntry


def plan_with_previous(
    storage: Storage, manifest: Manifest, shard_size: int, label_files: bool = False
) -> tuple[Plan, dict[int, ShardEntry]]:
    """The plan (the previous one kept where its rows are unchanged) and an entry per shard.

    A marker without a ``done`` entry (the ledger's last segment was lost in a crash) is
    adopted; a ``done`` entry without its marker is reset; failed shards get a new chance.
    A listing of the markers and the ledger's few files are all that is read, plus the
    markers being adopted.
    """
    known = Ledger(storage).read()
    markers = set(finished_shards(storage))
    finished = {i for i, e in known.items() if e.state == DONE} | markers
    previous = [e.descriptor for e in known.values()]
    plan = plan_shards(manifest, shard_size, previous, finished, label_files)
    entries: dict[int, ShardEntry] = {}
    for shard in plan.shards:
        entry = known.get(shard.index) or ShardEntry.planned(shard)
        has_marker = shard.index in markers
        if has_marker and entry.state != DONE:
            marker = read_marker(storage, shard.index)
            if marker["digest"] == shard.digest:
                entry = replace(
                    entry,
                    state=DONE,
                    images_done=marker["images"],
                    images_failed=marker["images_failed"],
                    annotations=marker["annotations"],
                    failures_by_error=marker["failures_by_error"],
                )
        elif not has_marker and entry.state == DONE:
            entry = replace(entry, state=PENDING)
        elif entry.state == FAILED:
            entry = replace(entry, state=PENDING, attempts=0)
        entries[shard.index] = entry
    return plan, entries
