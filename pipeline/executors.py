"""Where shards run: Ray actors (one model each) or in process. The coordinator swaps them.

An executor takes shards and reports, per shard, one :class:`Outcome`: a result, a dead worker
(retryable), or an error raised by our code (a bug: not retried).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pipeline.manifest import Shard
from pipeline.storage import Storage
from pipeline.worker import SegmenterLike, ShardResult, ShardSettings, process_shard

log = logging.getLogger(__name__)

SegmenterFactory = Callable[[], SegmenterLike]


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one shard attempt ended: exactly one of ``result``, ``died`` or ``error`` is set."""

    shard: int
    result: ShardResult | None = None
    died: str | None = None
    error: str | None = None
    traceback: str | None = None


class Executor(Protocol):
    """Runs shards; at most ``capacity`` at a time are in flight."""

    capacity: int

    def submit(self, shard: Shard) -> None: ...

    def wait(self) -> list[Outcome]:
        """Block until at least one submitted shard ends; return the ended ones."""
        ...

    def shutdown(self) -> None: ...


class LabelWorker:
    """The worker body (a Ray actor in :class:`RayExecutor`): builds the segmenter once, then
    labels shards with :func:`process_shard`."""

    def __init__(self, factory: SegmenterFactory, settings: ShardSettings, output: str) -> None:
        self._segmenter = factory()
        self._settings = settings
        self._storage = Storage(output)

    def process(self, shard: Shard) -> ShardResult:
        return process_shard(self._segmenter, shard, self._settings, self._storage)

    def pid(self) -> int:
        """The worker's process id: answers once the actor is (re)built; tests kill it."""
        return os.getpid()


class InProcessExecutor:
    """Runs each shard synchronously in this process (tests; debugging with pdb)."""

    capacity = 1

    def __init__(self, factory: SegmenterFactory, settings: ShardSettings, output: str) -> None:
        self._worker = LabelWorker(factory, settings, output)
        self._queue: list[Shard] = []

    def submit(self, shard: Shard) -> None:
        self._queue.append(shard)

    def wait(self) -> list[Outcome]:
        shard = self._queue.pop(0)
        try:
            return [Outcome(shard.index, result=self._worker.process(shard))]
        except Exception as err:
            return [
                Outcome(
                    shard.index,
                    error=f"{type(err).__name__}: {err}",
                    traceback=traceback.format_exc(),
                )
            ]

    def shutdown(self) -> None:
        self._queue.clear()


class RayExecutor:
    """``num_workers`` Ray actors, each with one model and (where the cluster has them) one GPU.

    Two shards per actor are kept in flight so the next shard's images decode while the model
    works. Actors that die are restarted by Ray; the shard they held is reported as ``died``.
    """

    def __init__(
        self,
        factory: SegmenterFactory,
        settings: ShardSettings,
        output: str,
        num_workers: int,
        per_worker: int = 2,
        owns_ray: bool = False,
    ) -> None:
        import ray

        self._ray = ray
        self._owns_ray = owns_ray
        resources = ray.cluster_resources()
        options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0}
        if resources.get("GPU", 0) >= 1:
            options.update(num_gpus=1, num_cpus=1)  # the other CPUs stay free for decoding
        else:
            # Ray caps a CPU actor's torch threads at its num_cpus: share the CPUs out.
            options["num_cpus"] = max(1, int(resources.get("CPU", 1)) // num_workers)
        kind = "GPU" if "num_gpus" in options else "CPU"
        wanted = num_workers * options.get("num_gpus", options["num_cpus"])
        if wanted > resources.get(kind, 0):
            log.warning(
                "%d workers need %s %s but the cluster has %s now: some workers wait until the "
                "cluster grows (lower --num-workers on a fixed cluster)",
                num_workers,
                wanted,
                kind,
                resources.get(kind, 0),
            )
        self._actor_class = ray.remote(LabelWorker).options(**options)
        self._actor_args = (factory, settings, output)
        self._actors: list[Any] = [
            self._actor_class.remote(*self._actor_args) for _ in range(num_workers)
        ]
        self.capacity = per_worker * num_workers
        self._in_flight: dict[Any, tuple[int, Any]] = {}
        log.info("started %d Ray workers (%s)", num_workers, options)

    @property
    def actors(self) -> list[Any]:
        return self._actors

    def submit(self, shard: Shard) -> None:
        loads = [
            sum(1 for _, a in self._in_flight.values() if a is actor) for actor in self._actors
        ]
        actor = self._actors[loads.index(min(loads))]
        self._in_flight[actor.process.remote(shard)] = (shard.index, actor)

    def wait(self) -> list[Outcome]:
        ready, _ = self._ray.wait(list(self._in_flight), num_returns=1)
        outcomes = []
        for ref in ready:
            shard, actor = self._in_flight.pop(ref)
            outcome = self._outcome(shard, ref)
            if outcome.died is not None:
                # Shards sent while Ray restarts the actor would fail at once and burn their
                # attempts: hold new work until the actor answers again.
                self._recover(actor)
            outcomes.append(outcome)
        return outcomes

    def _recover(self, actor: Any, timeout_s: float = 300.0) -> None:
        exceptions = self._ray.exceptions
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._ray.get(actor.pid.remote(), timeout=60)
                return
            except exceptions.ActorDiedError:  # out of restarts: start a fresh one in its place
                self._actors[self._actors.index(actor)] = self._actor_class.remote(
                    *self._actor_args
                )
                return
            except (exceptions.ActorUnavailableError, exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def _outcome(self, shard: int, ref: Any) -> Outcome:
        exceptions = self._ray.exceptions
        try:
            return Outcome(shard, result=self._ray.get(ref))
        except exceptions.RayTaskError as err:  # our code raised inside the worker: a bug
            return Outcome(
                shard, error=f"{type(err.cause).__name__}: {err.cause}", traceback=str(err)
            )
        except (
            exceptions.RayActorError,
            exceptions.WorkerCrashedError,
            exceptions.ObjectLostError,
        ) as err:
            return Outcome(
                shard, died=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            )

    def shutdown(self) -> None:
        for actor in self._actors:
            self._ray.kill(actor)
        self._in_flight.clear()
        if self._owns_ray:
            self._ray.shutdown()
