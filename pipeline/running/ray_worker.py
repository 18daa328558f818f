"""What runs on Ray's workers: the model actor that runs whole shard attempts, its host
stages, and the progress board.

The driver makes one call per few attempts (:meth:`ChainWorker.run`, a call of up to
``CALL_SHARDS`` small shards); the actor sends each shard's decode to a host task, labels it on
its model thread, sends the encode to a host task and answers with every shard's end. One
round trip for several shards, not three submissions for each, is what lets one driver keep up
with thousands of shards a second (``benchmarks/dispatch_speed.py``). Host tasks do the host
work, in their own processes on the CPUs the actors leave, and on the actor's node when the
cluster has several, so a shard's pixels never cross the network. The actor is asynchronous:
``per_worker`` attempts at a time, of any of its calls, decode and encode while the model
labels another, one shard at a time, in the order their decodes end; that bound, not the
number of shards sent, is what holds the worker's memory.
"""

from __future__ import annotations

import asyncio
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from pipeline.errors import describe, plain
from pipeline.formats.descriptors import Shard
from pipeline.formats.storage import Storage
from pipeline.running.stages import (
    DecodedShard,
    ProgressHook,
    SegmentedShard,
    ShardResult,
    ShardSettings,
    ShardTask,
    decode_shard,
    encode_shard,
)
from pipeline.running.worker import LabelWorker, SegmenterFactory

# An attempt and its result cross between the driver and the actor as tuples of plain values:
# Ray packs those with msgpack, where a dataclass is pickled (a third of the driver's cost
# of a call, measured). The fields are read from the classes, so one added travels too.
_SHARD = tuple(f.name for f in fields(Shard))
_TASK = tuple(f.name for f in fields(ShardTask) if f.name != "shard")
_RESULT = tuple(f.name for f in fields(ShardResult))
WireTask = tuple[tuple[Any, ...], tuple[Any, ...]]


def task_to_wire(task: ShardTask) -> WireTask:
    shard = task.shard
    return tuple(getattr(shard, n) for n in _SHARD), tuple(getattr(task, n) for n in _TASK)


def task_from_wire(wire: WireTask) -> ShardTask:
    shard, rest = wire
    values = dict(zip(_TASK, rest, strict=True))
    values["excluded"] = tuple(tuple(e) for e in values["excluded"])  # msgpack gives lists
    return ShardTask(Shard(*shard), **values)


def result_to_wire(result: ShardResult) -> tuple[Any, ...]:
    return tuple(getattr(result, n) for n in _RESULT)


def result_from_wire(wire: tuple[Any, ...]) -> ShardResult:
    return ShardResult(*wire)


# How an attempt of a call ended, on the wire: ``(DONE, result)`` (see :func:`result_to_wire`)
# or ``(RAISED, exception, traceback text)``, the exception as the actor caught it (a host
# task's error as Ray raised it).
DONE, RAISED = 0, 1
WireEnd = tuple[Any, ...]


def end_to_wire(end: tuple[Any, ...] | BaseException) -> WireEnd:
    """One attempt's end: its result wire, or what it raised (an exception that cannot be
    pickled travels as a ``RuntimeError`` naming it, so the call's other shards still do)."""
    if not isinstance(end, BaseException):
        return (DONE, end)
    text = plain(str(end)) if hasattr(end, "cause") else ""  # Ray's errors hold the traceback
    if not text:
        text = plain("".join(traceback.format_exception(end)))
    from ray import cloudpickle  # what Ray packs results with

    try:
        cloudpickle.dumps(end)
    except Exception:
        end = RuntimeError(describe(end))
    return (RAISED, end, text)


def decode_stage(task: ShardTask, settings: ShardSettings, output: str) -> DecodedShard:
    """The first stage as a host task."""
    return decode_shard(task, settings, Storage(output))


def encode_stage(segmented: SegmentedShard, settings: ShardSettings, output: str) -> ShardResult:
    """The last stage as a host task."""
    return encode_shard(segmented, settings, Storage(output))


def warm_stage() -> None:
    """Nothing, in a host worker: it starts one, with this module (and the stages) loaded."""


class ProgressBoard:
    """A Ray actor holding, per shard in flight, the images labelled so far and the ids of
    those being labelled now (what :class:`pipeline.running.stages.ProgressHook` is told)."""

    def __init__(self) -> None:
        self._shards: dict[int, tuple[int, tuple[Any, ...]]] = {}

    def note(self, shard: int, labelled: int, in_progress: tuple[Any, ...]) -> None:
        if in_progress:
            self._shards[shard] = (labelled, in_progress)
        else:  # the shard's segmenting ended: forgotten here, so the board never grows
            self._shards.pop(shard, None)

    def read(self) -> dict[int, tuple[int, tuple[Any, ...]]]:
        return dict(self._shards)


@dataclass(frozen=True, slots=True)
class BoardNotes:
    """The model actors' progress hook: a note to the board, fire-and-forget unless it must
    have arrived (a worker killed right after sending may never send what it queued)."""

    board: Any

    def __call__(
        self, shard: int, labelled: int, in_progress: tuple[Any, ...], confirm: bool
    ) -> None:
        sent = self.board.note.remote(shard, labelled, in_progress)
        if confirm:
            import ray

            ray.get(sent, timeout=60)


@dataclass(frozen=True, slots=True)
class _HostStages:
    decode: Any  # the remote functions, placed on this actor's node where that matters
    encode: Any
    warm: Any
    settings: Any  # the shard settings in the object store, put once


class ChainWorker(LabelWorker):
    """A :class:`LabelWorker` that runs whole attempts, several a call (:meth:`run`).

    The model runs on one thread of its own, so the event loop stays free to start the
    other attempts' host stages and to answer :meth:`pid` while a shard is labelled.
    Construction still does no work: :meth:`setup` builds the model.

    Args:
        host_cpus: CPUs each host task holds (1 beside a GPU; 0 on CPU-only clusters, where
            the actors hold the CPUs).
        per_worker: attempts between their decode's start and their encode's end at once.
    """

    def __init__(
        self,
        factory: SegmenterFactory,
        settings: ShardSettings,
        output: str,
        on_progress: ProgressHook | None,
        host_cpus: float,
        per_worker: int = 3,
    ) -> None:
        super().__init__(factory, settings, output, on_progress)
        self._host_cpus = host_cpus
        self._per_worker = per_worker
        self._room: asyncio.Semaphore | None = None
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._host: _HostStages | None = None

    def build(self, warm: bool = False) -> str:
        """Build the model (:meth:`setup`); return this actor's Ray node id.

        Args:
            warm: also start a host worker first (after a restart: the host workers of the
                actor that was lost died with it, and its next attempt should not spend its
                deadline on a new process's start).
        """
        self.setup()
        import ray

        if warm:
            host = self._host or self._host_stages()
            ray.get(host.warm.remote(), timeout=600)
        node: str = ray.get_runtime_context().get_node_id()
        return node

    async def run(self, wires: list[WireTask]) -> list[WireEnd]:
        """Run the call's attempts (each: decode in a host task, segment here, encode and
        write in a host task), ``per_worker`` at a time across calls; answer how each ended
        (:func:`end_to_wire`), in the call's order, once all have."""
        host = self._host or self._host_stages()
        ends = await asyncio.gather(
            *(self._attempt(task_from_wire(w), host) for w in wires), return_exceptions=True
        )
        return [end_to_wire(end) for end in ends]

    async def _attempt(self, task: ShardTask, host: _HostStages) -> tuple[Any, ...]:
        if self._room is None:  # made in the event loop it belongs to
            self._room = asyncio.Semaphore(self._per_worker)
        async with self._room:
            decoded = await host.decode.remote(task, host.settings, self._output)
            loop = asyncio.get_running_loop()
            segmented = await loop.run_in_executor(self._model_thread, self.segment, decoded)
            result: ShardResult = await host.encode.remote(segmented, host.settings, self._output)
        return result_to_wire(result)

    def _host_stages(self) -> _HostStages:
        """The host stages, pinned (softly: elsewhere if the node is full) to this actor's
        node when the cluster has several; on one node nothing crosses a network, and an
        unpinned task costs Ray less to schedule."""
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        # Idempotent stages: Ray may rerun one whose worker died (its own retries).
        decode = ray.remote(num_cpus=self._host_cpus)(decode_stage)
        encode = ray.remote(num_cpus=self._host_cpus)(encode_stage)
        warm = ray.remote(num_cpus=self._host_cpus)(warm_stage)
        if sum(bool(n["Alive"]) for n in ray.nodes()) > 1:
            node = ray.get_runtime_context().get_node_id()
            near = NodeAffinitySchedulingStrategy(node, soft=True)
            decode = decode.options(scheduling_strategy=near)
            encode = encode.options(scheduling_strategy=near)
            warm = warm.options(scheduling_strategy=near)
        self._host = _HostStages(decode, encode, warm, ray.put(self._settings))
        return self._host
