"""Where shard attempts run: the executor protocol, how an attempt ended, and the in-process
executor (tests, debugging with pdb).

On Ray (:mod:`pipeline.running.ray_executor`) each shard attempt is one call to a model actor
(:class:`pipeline.running.ray_worker.ChainWorker`), which runs the chain: a host task reads and
decodes, the actor labels, a host task encodes and writes.

An executor takes shard tasks and reports, per task, one :class:`Outcome` whose
:class:`OutcomeKind` classifies how it ended.
"""

from __future__ import annotations

import traceback
from collections import deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from pipeline.errors import SetupError, describe, is_disk_full, is_out_of_memory
from pipeline.running.stages import ProgressHook, ShardResult, ShardSettings, ShardTask
from pipeline.running.worker import LabelWorker, SegmenterFactory


class OutcomeKind(StrEnum):
    """How one shard attempt ended.

    ``done``; ``error``: our code raised (a bug, not retried); ``setup``: the worker's
    segmenter could not be built (the run ends); ``died``, ``oom``, ``timeout``: retryable
    (a lost worker, memory, a hung attempt); ``node_lost``: the worker's node was lost (a spot
    preemption, a crashed raylet): retried without spending the shard's attempts, a bounded
    number of times; ``disk_full``: the output ran out of space (the run ends, the shard stays
    pending for the resume); ``interrupted``: queued behind an attempt whose worker was lost
    or restarted: it never started, so it costs no attempt.
    """

    DONE = "done"
    ERROR = "error"
    SETUP = "setup"
    DIED = "died"
    OOM = "oom"
    TIMEOUT = "timeout"
    NODE_LOST = "node_lost"
    DISK_FULL = "disk_full"
    INTERRUPTED = "interrupted"

    @property
    def retryable(self) -> bool:
        return self in (OutcomeKind.DIED, OutcomeKind.OOM, OutcomeKind.TIMEOUT)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one shard attempt ended.

    Attributes:
        result: set when ``kind`` is ``done``.
        in_progress: when the worker was lost, the ids of the images it was labelling then,
            if known.
        node: where an attempt that did not finish ran (host, and Ray node), when known:
            the ledger counts each shard's retries by node as well as by cause.
    """

    shard: int
    kind: OutcomeKind
    result: ShardResult | None = None
    error: str | None = None
    traceback: str | None = None
    in_progress: tuple[Any, ...] = ()
    node: str = ""


def failure_kind(err: BaseException) -> OutcomeKind:
    """The outcome of an attempt that raised ``err`` (our code's error, or a resource)."""
    if is_out_of_memory(err):
        return OutcomeKind.OOM
    if is_disk_full(err):
        return OutcomeKind.DISK_FULL
    return OutcomeKind.ERROR


class Executor(Protocol):
    """Runs shard tasks; at most ``capacity`` at a time are in flight."""

    @property
    def capacity(self) -> int: ...

    def submit(self, task: ShardTask) -> None: ...

    def wait(self) -> list[Outcome]:
        """Block until something ends; return the attempts that ended (maybe none)."""
        ...

    def images_in_flight(self) -> int:
        """Images labelled so far by the attempts in flight (progress within shards)."""
        ...

    def shutdown(self) -> None: ...


class InProcessExecutor:
    """Runs each shard synchronously in this process.

    Attempts have no deadline here: nothing can interrupt a call in its own thread.
    """

    capacity = 1

    def __init__(
        self,
        factory: SegmenterFactory,
        settings: ShardSettings,
        output: str,
        on_progress: ProgressHook | None = None,
    ) -> None:
        self._worker = LabelWorker(factory, settings, output, on_progress)
        self._worker.setup()
        self._queue: deque[ShardTask] = deque()

    def submit(self, task: ShardTask) -> None:
        self._queue.append(task)

    def wait(self) -> list[Outcome]:
        task = self._queue.popleft()
        index = task.shard.index
        try:
            return [Outcome(index, OutcomeKind.DONE, result=self._worker.process(task))]
        except SetupError as err:
            return [Outcome(index, OutcomeKind.SETUP, error=err.cause, traceback=err.traceback)]
        except Exception as err:
            return [
                Outcome(
                    index, failure_kind(err), error=describe(err), traceback=traceback.format_exc()
                )
            ]

    def images_in_flight(self) -> int:
        return 0  # each attempt ends inside wait()

    def shutdown(self) -> None:
        self._queue.clear()
