"""Where shards run: the executor protocol, the model stage, and the in-process executor.

On Ray (:mod:`pipeline.running.ray_executor`) each shard attempt is a chain: a host task reads
and decodes (CPU; :func:`decode_stage`), a model actor labels (:class:`LabelWorker`, one model,
one GPU where the cluster has them), a host task encodes and writes (:func:`encode_stage`).
Ray passes each stage's output to the next through its object store, and the model actor never
waits on a decode it could have had ready: host tasks run on the CPUs the actors leave.

An executor takes shard tasks and reports, per task, one :class:`Outcome` whose ``kind``
classifies how it ended: ``done``; ``error`` (our code raised: a bug, not retried); ``setup``
(the worker's segmenter could not be built: the run ends); ``died``, ``oom`` or ``timeout``
(retryable: a lost worker, memory, a hung attempt); ``interrupted`` (queued behind an attempt
whose worker was lost or restarted: it never started, so it costs no attempt).
"""

from __future__ import annotations

import logging
import os
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import SetupError, describe, is_out_of_memory, plain
from pipeline.formats.storage import Storage
from pipeline.running.worker import (
    DecodedShard,
    SegmentedShard,
    SegmenterLike,
    ShardResult,
    ShardSettings,
    ShardTask,
    decode_shard,
    encode_shard,
    process_shard,
    segment_shard,
)

log = logging.getLogger(__name__)

SegmenterFactory = Callable[[], SegmenterLike]
DONE, ERROR, SETUP, DIED, OOM, TIMEOUT, INTERRUPTED = (
    "done",
    "error",
    "setup",
    "died",
    "oom",
    "timeout",
    "interrupted",
)
RETRYABLE = (DIED, OOM, TIMEOUT)


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one shard attempt ended; ``result`` is set when ``kind`` is ``done``."""

    shard: int
    kind: str
    result: ShardResult | None = None
    error: str | None = None
    traceback: str | None = None


class Executor(Protocol):
    """Runs shard tasks; at most ``capacity`` at a time are in flight."""

    @property
    def capacity(self) -> int: ...

    def submit(self, task: ShardTask) -> None: ...

    def wait(self) -> list[Outcome]:
        """Block until something ends; return the attempts that ended (maybe none)."""
        ...

    def shutdown(self) -> None: ...


class LabelWorker:
    """The model stage (a Ray actor in :class:`RayExecutor`): builds the segmenter once, then
    labels decoded shards with :func:`segment_shard`. Construction does no work, so a Ray
    restart always succeeds and a failing model build surfaces as a :class:`SetupError` from
    :meth:`setup`, with its cause."""

    def __init__(self, factory: SegmenterFactory, settings: ShardSettings, output: str) -> None:
        self._factory = factory
        self._settings = settings
        self._output = output
        self._segmenter: SegmenterLike | None = None

    def setup(self) -> int:
        """Build the segmenter if not built yet; return the worker's process id.

        Raises:
            SetupError: the segmenter cannot be built (out of memory is raised as it is: a
                lost resource, retried like a dead worker).
        """
        if self._segmenter is None:
            try:
                self._segmenter = self._factory()
            except Exception as err:
                if is_out_of_memory(err):
                    raise
                raise SetupError(describe(err), plain(traceback.format_exc())) from err
        return os.getpid()

    def segment(self, decoded: DecodedShard) -> SegmentedShard:
        self.setup()  # a no-op unless Ray restarted this actor
        assert self._segmenter is not None
        return segment_shard(self._segmenter, decoded, self._settings)

    def process(self, task: ShardTask) -> ShardResult:
        """All three stages, in this process."""
        self.setup()
        assert self._segmenter is not None
        return process_shard(self._segmenter, task, self._settings, Storage(self._output))

    def pid(self) -> int:
        """The worker's process id: answers once the actor is (re)built; tests kill it."""
        return os.getpid()


class InProcessExecutor:
    """Runs each shard synchronously in this process (tests; debugging with pdb).

    Attempts have no deadline here: nothing can interrupt a call in its own thread.
    """

    capacity = 1

    def __init__(self, factory: SegmenterFactory, settings: ShardSettings, output: str) -> None:
        self._worker = LabelWorker(factory, settings, output)
        self._worker.setup()
        self._queue: deque[ShardTask] = deque()

    def submit(self, task: ShardTask) -> None:
        self._queue.append(task)

    def wait(self) -> list[Outcome]:
        task = self._queue.popleft()
        index = task.shard.index
        try:
            return [Outcome(index, DONE, result=self._worker.process(task))]
        except SetupError as err:
            return [Outcome(index, SETUP, error=err.cause, traceback=err.traceback)]
        except Exception as err:
            kind = OOM if is_out_of_memory(err) else ERROR
            return [Outcome(index, kind, error=describe(err), traceback=traceback.format_exc())]

    def shutdown(self) -> None:
        self._queue.clear()


def decode_stage(task: ShardTask, settings: ShardSettings, output: str) -> DecodedShard:
    """The first stage as a host task."""
    return decode_shard(task, settings, Storage(output))


def encode_stage(segmented: SegmentedShard, settings: ShardSettings, output: str) -> ShardResult:
    """The last stage as a host task."""
    return encode_shard(segmented, settings, Storage(output))
