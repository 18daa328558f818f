"""Where shards run: Ray actors (one model each) or in process. The coordinator swaps them.

An executor takes shard tasks and reports, per task, one :class:`Outcome` whose ``kind``
classifies how it ended: ``done``; ``error`` (our code raised: a bug, not retried); ``setup``
(the worker's segmenter could not be built: the run ends); ``died``, ``oom`` or ``timeout``
(retryable: a lost worker, memory, a hung attempt); ``interrupted`` (queued behind an attempt
whose worker was lost or restarted: it never started, so it costs no attempt).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.errors import SetupError, describe, is_out_of_memory, plain
from pipeline.formats.storage import Storage
from pipeline.running.worker import (
    SegmenterLike,
    ShardResult,
    ShardSettings,
    ShardTask,
    process_shard,
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
    """The worker body (a Ray actor in :class:`RayExecutor`): builds the segmenter once, then
    labels shards with :func:`process_shard`. Construction does no work, so a Ray restart
    always succeeds and a failing model build surfaces as a :class:`SetupError` from
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

    def process(self, task: ShardTask) -> ShardResult:
        self.setup()  # a no-op unless Ray restarted this actor
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


@dataclass(slots=True)
class _Attempt:
    ref: Any
    task: ShardTask
    started: float | None  # when it began running: attempts on one actor run one at a time


@dataclass(slots=True)
class _Slot:
    """One worker: its actor, the attempts queued on it in order, and its model's state."""

    actor: Any
    setup_ref: Any = None
    setup_since: float = field(default_factory=time.monotonic)
    setup_failures: int = 0
    attempts: deque[_Attempt] = field(default_factory=deque)

    @property
    def ready(self) -> bool:
        return self.setup_ref is None


class RayExecutor:
    """``num_workers`` Ray actors, each with one model and (where the cluster has them) one GPU.

    Every actor builds its model before it gets work; an actor whose model cannot be built
    ends the run (:class:`SetupError`), one that dies while building is rebuilt up to
    ``setup_attempts`` times. Two attempts per actor are kept in flight so the next shard's
    images decode while the model works. An attempt running longer than ``shard_timeout_s``
    has its actor restarted and is reported as ``timeout``.
    """

    def __init__(
        self,
        factory: SegmenterFactory,
        settings: ShardSettings,
        output: str,
        num_workers: int,
        per_worker: int = 2,
        shard_timeout_s: float = 3600.0,
        setup_timeout_s: float = 1800.0,
        setup_attempts: int = 3,
    ) -> None:
        import ray

        self._ray = ray
        self._per_worker = per_worker
        self._shard_timeout_s = shard_timeout_s
        self._setup_timeout_s = setup_timeout_s
        self._setup_attempts = setup_attempts
        options = _actor_options(ray.cluster_resources(), num_workers)
        self._actor_class = ray.remote(LabelWorker).options(**options)
        self._actor_args = (factory, settings, output)
        self._slots = [
            _Slot(self._actor_class.remote(*self._actor_args)) for _ in range(num_workers)
        ]
        for slot in self._slots:
            slot.setup_ref = slot.actor.setup.remote()
        log.info("started %d Ray workers (%s)", num_workers, options)

    @property
    def actors(self) -> list[Any]:
        return [slot.actor for slot in self._slots]

    @property
    def capacity(self) -> int:
        """In-flight attempts allowed now: only workers whose model is built take work."""
        return self._per_worker * sum(slot.ready for slot in self._slots)

    def submit(self, task: ShardTask) -> None:
        slot = min((s for s in self._slots if s.ready), key=lambda s: len(s.attempts))
        started = None if slot.attempts else time.monotonic()
        slot.attempts.append(_Attempt(slot.actor.process.remote(task), task, started))

    def wait(self) -> list[Outcome]:
        refs = {a.ref: slot for slot in self._slots for a in slot.attempts}
        refs.update({slot.setup_ref: slot for slot in self._slots if not slot.ready})
        if not refs:
            return []
        ready, _ = self._ray.wait(list(refs), num_returns=1, timeout=self._next_deadline())
        if not ready:
            return self._expire()
        slot = refs[ready[0]]
        if ready[0] is slot.setup_ref:
            self._setup_ended(slot)
            return []
        return self._attempt_ended(slot, ready[0])

    def shutdown(self) -> None:
        for slot in self._slots:
            self._ray.kill(slot.actor)
            slot.attempts.clear()

    # ---- setup --------------------------------------------------------------------------

    def _setup_ended(self, slot: _Slot) -> None:
        exceptions = self._ray.exceptions
        try:
            self._ray.get(slot.setup_ref)
            slot.setup_ref = None
            return
        except exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None) or err
            if isinstance(cause, SetupError):
                raise SetupError(cause.cause, cause.traceback) from None
            if not is_out_of_memory(cause):
                raise SetupError(describe(cause), plain(str(err))) from None
            why = describe(cause)
        except (exceptions.RayActorError, exceptions.WorkerCrashedError) as err:
            why = _first_line(err)
        slot.setup_failures += 1
        if slot.setup_failures >= self._setup_attempts:
            raise SetupError(
                f"a worker died {slot.setup_failures} times while building its model; last: {why}"
            )
        log.warning("a worker died while building its model (%s); building it again", why)
        self._recover(slot)
        slot.setup_ref, slot.setup_since = slot.actor.setup.remote(), time.monotonic()

    # ---- attempts -----------------------------------------------------------------------

    def _attempt_ended(self, slot: _Slot, ref: Any) -> list[Outcome]:
        attempt = next(a for a in slot.attempts if a.ref is ref)
        outcome, lost = self._outcome(attempt.task, ref)
        if not lost:
            slot.attempts.remove(attempt)
            if slot.attempts and slot.attempts[0].started is None:
                slot.attempts[0].started = time.monotonic()
            return [outcome]
        # The actor died: every attempt on it failed at once. The one running is the cause;
        # those queued behind never started.
        head = slot.attempts[0]
        ended = [Outcome(head.task.shard.index, outcome.kind, error=outcome.error)]
        ended += [_interrupted(a) for a in list(slot.attempts)[1:]]
        slot.attempts.clear()
        self._recover(slot)
        return ended

    def _outcome(self, task: ShardTask, ref: Any) -> tuple[Outcome, bool]:
        """The attempt's outcome, and whether its actor was lost."""
        exceptions = self._ray.exceptions
        index = task.shard.index
        try:
            return Outcome(index, DONE, result=self._ray.get(ref)), False
        except exceptions.RayTaskError as err:  # our code raised inside the worker
            cause = getattr(err, "cause", None) or err
            if isinstance(cause, SetupError):
                return Outcome(index, SETUP, error=cause.cause, traceback=cause.traceback), False
            kind = OOM if is_out_of_memory(cause) else ERROR
            return Outcome(index, kind, error=describe(cause), traceback=plain(str(err))), False
        except (
            exceptions.OutOfMemoryError,
            exceptions.RayActorError,
            exceptions.WorkerCrashedError,
            exceptions.ObjectLostError,
        ) as err:
            kind = OOM if is_out_of_memory(err) else DIED
            return Outcome(index, kind, error=_first_line(err)), True

    def _next_deadline(self) -> float | None:
        """Seconds until the earliest running attempt or pending setup is overdue."""
        now = time.monotonic()
        ends = [
            s.attempts[0].started + self._shard_timeout_s
            for s in self._slots
            if s.attempts and s.attempts[0].started is not None
        ]
        ends += [s.setup_since + self._setup_timeout_s for s in self._slots if not s.ready]
        return max(0.0, min(ends) - now) if ends else None

    def _expire(self) -> list[Outcome]:
        """Restart the actors of overdue attempts; fail the run if no model could be built."""
        now = time.monotonic()
        late_setup = [s for s in self._slots if not s.ready]
        if late_setup and all(now - s.setup_since >= self._setup_timeout_s for s in late_setup):
            if not any(s.ready for s in self._slots):
                raise SetupError(
                    f"no worker built its model within {self._setup_timeout_s:.0f} s: the "
                    "cluster may lack the resources they ask for (see the log), or loading hangs"
                )
            for slot in late_setup:  # others work; these may get resources later
                slot.setup_since = now
        ended: list[Outcome] = []
        for slot in self._slots:
            head = slot.attempts[0] if slot.attempts else None
            if head is None or head.started is None or now - head.started < self._shard_timeout_s:
                continue
            log.warning(
                "%s ran past its %.0f s deadline; restarting its worker",
                head.task.shard.name,
                self._shard_timeout_s,
            )
            self._ray.kill(slot.actor, no_restart=False)
            message = (
                f"TimeoutError: the attempt ran past its {self._shard_timeout_s:.0f} s deadline "
                "(--shard-timeout); its worker was restarted"
            )
            ended.append(Outcome(head.task.shard.index, TIMEOUT, error=message))
            ended += [_interrupted(a) for a in list(slot.attempts)[1:]]
            slot.attempts.clear()
            self._recover(slot)
        return ended

    def _recover(self, slot: _Slot, timeout_s: float = 300.0) -> None:
        """Wait until the slot's actor answers again; replace it if Ray gave up on it.

        Attempts sent while Ray restarts an actor would fail at once and burn their tries.
        """
        exceptions = self._ray.exceptions
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._ray.get(slot.actor.pid.remote(), timeout=60)
                return
            except exceptions.ActorDiedError:  # out of restarts: a fresh actor takes its place
                slot.actor = self._actor_class.remote(*self._actor_args)
                return
            except (exceptions.ActorUnavailableError, exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _actor_options(resources: dict[str, float], num_workers: int) -> dict[str, Any]:
    """One GPU per actor where the cluster has GPUs, else a fair share of the CPUs."""
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
    return options


def _interrupted(attempt: _Attempt) -> Outcome:
    return Outcome(
        attempt.task.shard.index,
        INTERRUPTED,
        error="interrupted: queued on a worker that was lost or restarted",
    )


def _first_line(err: BaseException) -> str:
    text = plain(str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
