"""Where a run's shards stand: the one answer to "is this shard done".

A shard is done when its marker is in place and was written for the shard as planned (same
digest of ids). The ledger says so too, a few seconds later: its entries are written after the
markers and batched, so the markers are the truth and the ledger is their index.
:func:`reconcile` applies that rule to one entry; :func:`read_progress` to a whole output,
for ``jobs.status``, the report, FiftyOne and resume alike.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.errors import DamagedFileError
from pipeline.formats.layout import DAMAGED, SHARDS, shard_path
from pipeline.formats.ledger import Ledger, PlannedEntries, ShardEntry, ShardState
from pipeline.formats.shard_files import ShardMarker, read_marker
from pipeline.formats.storage import Storage

log = logging.getLogger(__name__)

DAMAGED_MARKERS = f"{DAMAGED}/{SHARDS}"  # where the driver moves markers it cannot read


def finished_shards(storage: Storage) -> list[int]:
    """Indices of the shards whose marker is in place (one listing), in order."""
    names = storage.list(SHARDS)
    return sorted(int(p.rsplit("-", 1)[1].removesuffix(".json")) for p in names)


def reconcile(entry: ShardEntry, has_marker: bool, marker: Callable[[], ShardMarker]) -> ShardEntry:
    """``entry`` with the state its marker gives it.

    A ``done`` entry without its marker is pending (the files went missing); a marker
    without a ``done`` entry (the ledger's last segment was lost, or has not been written
    yet) makes the entry done with the marker's counts, if the marker is of this shard as
    planned. ``marker`` reads the marker, only when it is needed.

    Raises:
        DamagedFileError: the marker had to be read and is not one.
    """
    if not has_marker:
        return replace(entry, state=ShardState.PENDING) if entry.state == ShardState.DONE else entry
    if entry.state == ShardState.DONE:
        return entry
    found = marker()
    if found.digest != entry.digest:  # a marker of another plan's shard at this index
        return entry
    return replace(entry, state=ShardState.DONE, **counts_of(found))


COUNT_FIELDS = ("images_done", "images_failed", "annotations", "failures_by_error")


def counts_of(marker: ShardMarker) -> dict[str, Any]:
    """The ledger's count fields (:data:`COUNT_FIELDS`), from a marker."""
    return {
        "images_done": marker.images,
        "images_failed": marker.images_failed,
        "annotations": marker.annotations,
        "failures_by_error": dict(marker.failures_by_error),
    }


@dataclass(frozen=True, slots=True)
class Progress:
    """Every shard the ledger knows, each with the state its marker gives it.

    Attributes:
        entries: by shard index: the ledger's plan as columns, objects for the shards it or
            a marker knows (the others are fresh ``pending`` entries, made when read).
        unplanned: shards with a marker but no ledger entry (the ledger lost them), as
            markers; they count as done.
        damaged: files that could not be read (path -> problem), skipped.
    """

    entries: PlannedEntries
    unplanned: dict[int, ShardMarker]
    damaged: dict[str, str]

    @property
    def done(self) -> list[ShardEntry]:
        return [e for _, e in sorted(self.entries.known.items()) if e.state == ShardState.DONE]

    @property
    def failed(self) -> list[ShardEntry]:
        """The failed shards' entries, by index."""
        return [e for _, e in sorted(self.entries.known.items()) if e.state == ShardState.FAILED]

    @property
    def done_shards(self) -> list[int]:
        """Indices of every finished shard (ledger entries and markers alone), in order."""
        return sorted([e.shard for e in self.done] + list(self.unplanned))

    def counts_by_shard(self) -> dict[int, dict[str, Any]]:
        """Per finished shard, its :data:`COUNT_FIELDS`."""
        counts = {e.shard: {f: getattr(e, f) for f in COUNT_FIELDS} for e in self.done}
        counts.update((i, counts_of(m)) for i, m in self.unplanned.items())
        return counts

    def states(self) -> Counter[ShardState]:
        states = Counter(e.state for e in self.entries.known.values())
        states[ShardState.PENDING] += len(self.entries) - len(self.entries.known)  # fresh ones
        states[ShardState.DONE] += len(self.unplanned)
        return states

    def totals(self) -> dict[str, Any]:
        """Shards planned, done and failed; images labelled and failed; annotations; failed
        images by error: summed over the finished shards (no shard file is read)."""
        return totals(self.entries, self.unplanned.values())

    def by_node(self) -> dict[str, tuple[int, int]]:
        """Finished shards and their labelled images, by the model worker that labelled them
        (``""``: not recorded, as by markers alone or older ledgers)."""
        counts: dict[str, tuple[int, int]] = {}
        finished = [(e.node, e.images_done) for e in self.done]
        finished += [("", m.images) for m in self.unplanned.values()]
        for node, images in finished:
            shards, total = counts.get(node, (0, 0))
            counts[node] = (shards + 1, total + images)
        return counts

    def retries(self) -> Counter[str]:
        """Retried attempts by cause, over the run."""
        return sum((Counter(e.retries) for e in self.entries.known.values()), Counter())

    def retries_by_node(self) -> dict[str, Counter[str]]:
        """Retried attempts by the node they ran on, then cause (those whose node the
        executor knew: the in-process executor and older ledgers record none)."""
        by_node: dict[str, Counter[str]] = {}
        for entry in self.entries.known.values():
            for node, causes in entry.retry_nodes.items():
                by_node.setdefault(node, Counter()).update(causes)
        return by_node


def totals(
    entries: Iterable[ShardEntry] | PlannedEntries, markers: Iterable[ShardMarker] = ()
) -> dict[str, Any]:
    """``run.json``'s counts over ``entries`` (and finished shards known only by marker); of
    :class:`PlannedEntries`, only the known ones are read (the others are fresh)."""
    result: dict[str, Any] = dict.fromkeys(
        ("shards", "shards_done", "shards_failed", "images_labelled", "images_failed"), 0
    )
    result["annotations"] = 0
    by_error: Counter[str] = Counter()
    if isinstance(entries, PlannedEntries):
        result["shards"] = len(entries) - len(entries.known)  # fresh: pending, no counts
        entries = entries.known.values()
    rows = [(e.state, {f: getattr(e, f) for f in COUNT_FIELDS}) for e in entries]
    rows += [(ShardState.DONE, counts_of(m)) for m in markers]
    for state, counts in rows:
        result["shards"] += 1
        result["shards_failed"] += state == ShardState.FAILED
        if state == ShardState.DONE:
            result["shards_done"] += 1
            result["images_labelled"] += counts["images_done"]
            result["images_failed"] += counts["images_failed"]
            result["annotations"] += counts["annotations"]
            by_error.update(counts["failures_by_error"])
    result["failures_by_error"] = dict(by_error.most_common())
    return result


def read_progress(storage: Storage, repair: bool = False) -> Progress:
    """The output's shards, each reconciled with its marker (one listing of the markers, the
    ledger's few files, and the markers of shards the ledger does not yet call done).

    Damaged files are skipped and named in :attr:`Progress.damaged`; with ``repair`` (the
    driver, before it resumes) they are moved aside: a damaged marker's shard is then
    pending and labelled again.
    """
    ledger = Ledger(storage)
    read = ledger.read(repair=repair)
    damaged = dict(ledger.damaged)
    markers = set(finished_shards(storage))
    entries: dict[int, ShardEntry] = {}
    for index, entry in read.known.items():
        entries[index] = _reconciled(storage, entry, index in markers, damaged, repair)
    # a fresh row with a marker (its entry's segment was lost): adopted if the marker fits
    others = np.array(sorted(markers - read.known.keys()), np.int64)
    at = read.shards.positions(others)
    for shard in read.shards.take(at[at >= 0]):
        entry = _reconciled(storage, ShardEntry.planned(shard), True, damaged, repair)
        if not entry.fresh:
            entries[shard.index] = entry
    unplanned: dict[int, ShardMarker] = {}
    for index in others[at < 0].tolist():
        try:
            unplanned[index] = read_marker(storage, index)
        except DamagedFileError as err:
            _damaged_marker(storage, index, err, damaged, repair)
    return Progress(PlannedEntries(read.shards, entries), unplanned, damaged)


def _reconciled(
    storage: Storage, entry: ShardEntry, has: bool, damaged: dict[str, str], repair: bool
) -> ShardEntry:
    try:
        return reconcile(entry, has, lambda: read_marker(storage, entry.shard))
    except DamagedFileError as err:
        _damaged_marker(storage, entry.shard, err, damaged, repair)
        return reconcile(entry, False, lambda: read_marker(storage, entry.shard))


def _damaged_marker(
    storage: Storage, index: int, err: DamagedFileError, damaged: dict[str, str], repair: bool
) -> None:
    path = shard_path(index)
    damaged[path] = err.problem
    if repair:
        log.warning(
            "%s is damaged (%s); moved to %s, the shard is labelled again",
            err.location,
            err.problem,
            storage.uri(DAMAGED_MARKERS),
        )
        storage.write_atomic(f"{DAMAGED_MARKERS}/{path.rsplit('/', 1)[1]}", storage.read(path))
        storage.delete(path)
    else:
        log.warning("%s", err)
