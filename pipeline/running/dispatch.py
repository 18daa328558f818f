"""The dispatch loop: shards to attempts, with backpressure, retries and the ledger.

Each ended attempt updates the shard's ledger entry: ``done``; retried (a lost worker, out of
memory, a missed deadline) until ``max_attempts``; ``failed`` with its traceback when our code
raised; given back when it never started. A worker that cannot build its model ends the run.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import replace

from tqdm import tqdm

from pipeline.errors import SetupError, plain
from pipeline.planning.plan import Shard
from pipeline.running.executors import DONE as ENDED_DONE
from pipeline.running.executors import ERROR, INTERRUPTED, RETRYABLE, SETUP, Executor, Outcome
from pipeline.running.ledger import DONE, FAILED, PENDING, Ledger, ShardEntry
from pipeline.running.worker import ShardTask

log = logging.getLogger(__name__)


def dispatch(
    executor: Executor,
    todo: list[Shard],
    ledger: Ledger,
    max_attempts: int,
    retried: set[int],
) -> dict[str, int]:
    """Run ``todo`` to the end, at most ``executor.capacity`` attempts in flight.

    Args:
        executor: where attempts run.
        todo: the shards to run, in order.
        ledger: holds every shard's entry; each ended attempt is recorded there.
        max_attempts: tries per shard for retryable causes (``died``, ``oom``, ``timeout``).
        retried: shards whose failed images only are relabelled (``--retry-failed``).

    Returns:
        The retried attempts by cause.

    Raises:
        SetupError: a worker could not build its model; the run must end.
    """
    entries = ledger.entries
    by_index = {s.index: s for s in todo}
    work = {
        s.index: entries[s.index].images_failed if s.index in retried else s.count for s in todo
    }
    queue = deque(todo)
    in_flight = 0
    failures = 0
    retries: Counter[str] = Counter()
    with tqdm(total=sum(work.values()), unit="img", desc="labelling", dynamic_ncols=True) as bar:
        while queue or in_flight:
            while queue and in_flight < executor.capacity:
                shard = queue.popleft()
                entry = entries[shard.index] = replace(
                    entries[shard.index], attempts=entries[shard.index].attempts + 1
                )
                final = entry.attempts >= max_attempts
                executor.submit(ShardTask(shard, entry.attempts, final, shard.index in retried))
                in_flight += 1
            for outcome in executor.wait():
                in_flight -= 1
                entry = _after_attempt(outcome, entries[outcome.shard], ledger, max_attempts)
                entries[outcome.shard] = entry
                if outcome.kind in RETRYABLE:
                    retries[outcome.kind] += 1
                if entry.state == DONE:
                    failures += entry.images_failed
                    bar.update(work[outcome.shard])
                    bar.set_postfix(failed_images=failures, refresh=False)
                elif entry.state == PENDING:
                    queue.append(by_index[outcome.shard])
                else:
                    bar.update(work[outcome.shard])
    return dict(retries)


def _after_attempt(
    outcome: Outcome, entry: ShardEntry, ledger: Ledger, max_attempts: int
) -> ShardEntry:
    """The ledger's new entry for a shard after one attempt ended."""
    if outcome.kind == ENDED_DONE:
        assert outcome.result is not None
        r = outcome.result
        return ledger.write(
            replace(
                entry,
                state=DONE,
                images_done=r.images_done,
                images_failed=r.images_failed,
                annotations=r.annotations,
                failures_by_error=r.failures_by_error,
                seconds=r.seconds,
                host_seconds=r.host_seconds,
                error=None,
                traceback=None,
            )
        )
    if outcome.kind == INTERRUPTED:  # it never ran: the attempt is given back
        return replace(entry, state=PENDING, attempts=entry.attempts - 1)
    if outcome.kind == SETUP:
        ledger.write(
            replace(
                entry,
                state=PENDING,
                error=f"worker setup failed: {outcome.error}",
                traceback=outcome.traceback,
            )
        )
        raise SetupError(outcome.error or "worker setup failed", outcome.traceback)
    if outcome.kind in RETRYABLE:
        retries = {**entry.retries, outcome.kind: entry.retries.get(outcome.kind, 0) + 1}
        entry = replace(entry, retries=retries, error=outcome.error)
        if entry.attempts < max_attempts:
            log.warning(
                "%s on shard %d (attempt %d/%d): %s; retrying",
                outcome.kind,
                entry.shard,
                entry.attempts,
                max_attempts,
                outcome.error,
            )
            return ledger.write(replace(entry, state=PENDING))
        message = (
            f"gave up after {entry.attempts} attempts ({_causes(retries)}); last: {outcome.error}"
        )
    else:
        assert outcome.kind == ERROR, outcome.kind
        message = outcome.error or "unknown error"
    log.error("shard %d failed: %s", entry.shard, message)
    return ledger.write(
        replace(
            entry, state=FAILED, error=message, traceback=plain(outcome.traceback or "") or None
        )
    )


def _causes(retries: dict[str, int]) -> str:
    return ", ".join(f"{n} {cause}" for cause, n in sorted(retries.items()))
