"""The dispatch loop: shards to attempts, with backpressure, retries and the ledger.

Each ended attempt updates the shard's ledger entry: ``done``; retried (a lost worker, out of
memory, a missed deadline) until ``max_attempts``; ``failed`` with its traceback when our code
raised; given back when it never started. The final attempt of a shard whose worker was lost
labels one image per call: if the worker is lost again, the image it was on is recorded as
failed and the shard goes on without it, so one image that kills its worker fails alone. A
worker that cannot build its model, or an output out of space, ends the run.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from tqdm import tqdm

from pipeline.errors import DiskFullError, SetupError, plain
from pipeline.formats.descriptors import Shard
from pipeline.formats.ledger import Ledger, ShardEntry, ShardState
from pipeline.running.executors import Executor, Outcome, OutcomeKind
from pipeline.running.stages import ShardTask
from pipeline.running.stop import StopRequest

log = logging.getLogger(__name__)

WORKER_LOST = "WorkerLost"  # the failure record's ``error`` for an image that lost its worker
MAX_NODE_LOSSES = 5  # a shard retried this often because its node was lost: then it counts


@dataclass(slots=True)
class _Shards:
    """The dispatch loop's own state, beside the ledger's entries: where it is in ``todo``
    and what it holds of the shards sent, requeued or relabelled (nothing per shard of
    ``todo``, which may hold millions)."""

    todo: Sequence[Shard]
    relabelled: dict[int, int]  # per shard of --retry-failed: the failed images it relabels
    sent: int = 0  # todo[:sent] went out at least once
    requeued: deque[Shard] = field(default_factory=deque)  # to send again, in order
    flying: dict[int, Shard] = field(default_factory=dict)  # sent, not ended
    excluded: dict[int, list[tuple[Any, str, str]]] = field(default_factory=dict)
    isolated: set[int] = field(default_factory=set)  # in flight, one image per call

    @property
    def queued(self) -> int:
        return len(self.todo) - self.sent + len(self.requeued)

    def next_shard(self) -> Shard:
        """The next shard to send: ``todo`` in order, then the requeued ones."""
        if self.sent < len(self.todo):
            self.sent += 1
            return self.todo[self.sent - 1]
        return self.requeued.popleft()

    def work(self, shard: Shard) -> int:
        """Images the shard's attempts label (all, or the failed ones when relabelling)."""
        return self.relabelled.get(shard.index, shard.count)


def dispatch(
    executor: Executor,
    todo: Sequence[Shard],
    ledger: Ledger,
    max_attempts: int,
    retried: set[int],
    stop: StopRequest | None = None,
    stop_timeout_s: float = 60.0,
) -> dict[str, int]:
    """Run ``todo`` to the end, at most ``executor.capacity`` attempts in flight.

    Args:
        executor: where attempts run.
        todo: the shards to run, in order (any sequence: read one shard at a time).
        ledger: holds every shard's entry; each ended attempt is recorded there.
        max_attempts: tries per shard for retryable causes (``died``, ``oom``, ``timeout``).
        retried: shards whose failed images only are relabelled (``--retry-failed``).
        stop: once requested, no shard is submitted; the attempts in flight may finish
            within ``stop_timeout_s``, then :class:`Stopped` is raised.

    Returns:
        The retried attempts by cause.

    Raises:
        SetupError: a worker could not build its model; the run must end.
        DiskFullError: the output ran out of space; the shards in flight stay pending.
        Stopped: ``stop`` was requested (the attempts not finished stay pending).
    """
    stop = stop or StopRequest()
    entries = ledger.entries
    state = _Shards(todo, {i: entries[i].images_failed for i in retried})
    failures = 0
    finished = 0  # images of shards that ended
    retries: Counter[str] = Counter()
    disk_full: Outcome | None = None
    said_stopping = False
    total = sum(state.work(s) for s in todo)
    with tqdm(total=total, unit="img", desc="labelling", dynamic_ncols=True) as bar:
        bar.set_postfix(failed_images=0, refresh=False)
        while (state.queued and disk_full is None and not stop.requested) or state.flying:
            if stop.requested and not said_stopping:
                said_stopping = True
                log.warning(
                    "stopping: no new shard; the %d attempts in flight may finish within %.0f s",
                    len(state.flying),
                    stop_timeout_s,
                )
            if stop.overdue(stop_timeout_s):
                log.warning("stopping: %d attempts in flight given back", len(state.flying))
                raise stop.stopped()
            if state.queued and disk_full is None and not stop.requested:
                room = executor.capacity - len(state.flying)
                for _ in range(min(room, state.queued)):
                    task = _next_task(state, entries, max_attempts, retried)
                    if task.isolate:
                        state.isolated.add(task.shard.index)
                    executor.submit(task)
                    state.flying[task.shard.index] = task.shard
            for outcome in executor.wait():
                shard = state.flying.pop(outcome.shard)
                entry = entries[outcome.shard]
                culprit = _culprit(outcome, state)
                state.isolated.discard(outcome.shard)
                if culprit is not None:
                    entry = ledger.write(_exclude(outcome, entry, culprit, state))
                else:
                    entry = _after_attempt(outcome, entry, ledger, max_attempts)
                entries[outcome.shard] = entry
                if outcome.kind.retryable or outcome.kind in _COUNTED:
                    retries[outcome.kind] += 1
                if outcome.kind == OutcomeKind.DISK_FULL:
                    disk_full = disk_full or outcome
                elif entry.state == ShardState.PENDING:
                    state.requeued.append(shard)
                else:
                    finished += state.work(shard)
                    if entry.images_failed:
                        failures += entry.images_failed
                        bar.set_postfix(failed_images=failures, refresh=False)
            # never backwards: a shard's images leave the board when its segmenting ends,
            # before its files are written and it counts as finished
            labelled = min(total, finished + executor.images_in_flight())
            if labelled > bar.n:
                bar.update(labelled - bar.n)  # tqdm redraws at most every 0.1 s
    if disk_full is not None:
        raise DiskFullError(disk_full.error or "no space left on the output")
    if stop.requested and state.queued:
        if not said_stopping:
            log.warning("stopping: no new shard; nothing was in flight")
        log.warning("stopped: %d shards left for the resume", state.queued)
        raise stop.stopped()
    return dict(retries)


def _next_task(
    state: _Shards, entries: MutableMapping[int, ShardEntry], max_attempts: int, retried: set[int]
) -> ShardTask:
    """The next queued shard's attempt, counted in its entry."""
    shard = state.next_shard()
    entry = entries[shard.index] = replace(
        entries[shard.index], attempts=entries[shard.index].attempts + 1
    )
    final = entry.attempts >= max_attempts
    lost = entry.retries.get(OutcomeKind.DIED, 0) + entry.retries.get(OutcomeKind.OOM, 0)
    return ShardTask(
        shard,
        entry.attempts,
        final,
        shard.index in retried,
        isolate=final and lost > 0,
        excluded=tuple(state.excluded.get(shard.index, ())),
    )


def _culprit(outcome: Outcome, state: _Shards) -> Any | None:
    """The image an isolated attempt was labelling when its worker was lost, if it is known."""
    lost = outcome.kind in (OutcomeKind.DIED, OutcomeKind.OOM)
    if lost and outcome.shard in state.isolated and len(outcome.in_progress) == 1:
        [image_id] = outcome.in_progress
        excluded = {e[0] for e in state.excluded.get(outcome.shard, ())}
        return None if image_id in excluded else image_id
    return None


def _exclude(outcome: Outcome, entry: ShardEntry, image_id: Any, state: _Shards) -> ShardEntry:
    """Record ``image_id`` as failed in the shard's next attempts, which go on without it;
    the attempt is given back (each culprit costs an attempt of its own, not the shard's)."""
    message = (
        f"the worker labelling this image alone was lost ({outcome.error}); the image may need "
        "more memory than a worker has (see --max-image-pixels and inference max_long_side)"
    )
    state.excluded.setdefault(outcome.shard, []).append((image_id, WORKER_LOST, message))
    log.warning("shard %d: image %r lost its worker; recorded as failed", entry.shard, image_id)
    return replace(_given_back(entry, outcome.kind, outcome), error=entry.error)


def _given_back(entry: ShardEntry, cause: OutcomeKind, outcome: Outcome) -> ShardEntry:
    """The entry of an attempt that ended through no fault of the shard: pending again, the
    attempt given back, the cause counted among its retries."""
    return replace(
        _counted(entry, cause, outcome.node),
        state=ShardState.PENDING,
        attempts=entry.attempts - 1,
        error=outcome.error,
    )


def _counted(entry: ShardEntry, cause: OutcomeKind, node: str) -> ShardEntry:
    """``entry`` with one more retry of ``cause``, by cause and, where known, by node."""
    retries = {**entry.retries, cause: entry.retries.get(cause, 0) + 1}
    if not node:
        return replace(entry, retries=retries)
    on_node = entry.retry_nodes.get(node, {})
    on_node = {**on_node, cause: on_node.get(cause, 0) + 1}
    return replace(entry, retries=retries, retry_nodes={**entry.retry_nodes, node: on_node})


def _after_attempt(
    outcome: Outcome, entry: ShardEntry, ledger: Ledger, max_attempts: int
) -> ShardEntry:
    """The ledger's new entry for a shard after one attempt ended."""
    kind = outcome.kind
    if kind == OutcomeKind.DONE:
        assert outcome.result is not None
        r = outcome.result
        return ledger.write(
            entry,
            state=ShardState.DONE,
            images_done=r.images_done,
            images_failed=r.images_failed,
            annotations=r.annotations,
            failures_by_error=r.failures_by_error,
            seconds=r.seconds,
            host_seconds=r.host_seconds,
            node=r.node,
            error=None,
            traceback=None,
        )
    if kind == OutcomeKind.INTERRUPTED:  # it never ran: the attempt is given back
        return replace(entry, state=ShardState.PENDING, attempts=entry.attempts - 1)
    if kind == OutcomeKind.NODE_LOST:
        if entry.retries.get(kind, 0) < MAX_NODE_LOSSES:  # not the shard's fault
            log.warning("shard %d: %s; retrying elsewhere", entry.shard, outcome.error)
            return ledger.write(_given_back(entry, kind, outcome))
        # past the bound: counted, and then retried as a lost worker
        entry = _counted(entry, kind, outcome.node)
        kind = OutcomeKind.DIED
    if kind == OutcomeKind.DISK_FULL:  # a resource, not the shard's fault: left for the resume
        return ledger.write(_given_back(entry, kind, outcome))
    if kind == OutcomeKind.SETUP:
        ledger.write(
            replace(
                entry,
                state=ShardState.PENDING,
                error=f"worker setup failed: {outcome.error}",
                traceback=outcome.traceback,
            )
        )
        raise SetupError(outcome.error or "worker setup failed", outcome.traceback)
    if kind.retryable:
        entry = replace(_counted(entry, kind, outcome.node), error=outcome.error)
        retries = entry.retries
        if entry.attempts < max_attempts:
            log.warning(
                "%s on shard %d (attempt %d/%d): %s; retrying",
                kind,
                entry.shard,
                entry.attempts,
                max_attempts,
                outcome.error,
            )
            return ledger.write(replace(entry, state=ShardState.PENDING))
        message = (
            f"gave up after {entry.attempts} attempts ({_causes(retries)}); last: {outcome.error}"
        )
    else:
        assert kind == OutcomeKind.ERROR, kind
        message = outcome.error or "unknown error"
    log.error("shard %d failed: %s", entry.shard, message)
    return ledger.write(
        replace(
            entry,
            state=ShardState.FAILED,
            error=message,
            traceback=plain(outcome.traceback or "") or None,
        )
    )


_COUNTED = (OutcomeKind.DISK_FULL, OutcomeKind.NODE_LOST)  # retried, not as attempts


def _causes(retries: dict[str, int]) -> str:
    return ", ".join(f"{n} {cause}" for cause, n in sorted(retries.items()))
