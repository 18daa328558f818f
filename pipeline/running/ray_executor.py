"""Shards on Ray: model actors that run whole attempts, with deadlines, retries and setup
checks.

Attempts go to their model actor (:class:`pipeline.running.ray_worker.ChainWorker`) in calls of
a few shards (about :data:`CALL_S` of its work, at most :data:`CALL_SHARDS`), and the actor
runs each shard's chain itself: a host task reads and decodes, the actor segments, a host task encodes and writes. One
round trip for several shards keeps the driver's work to a fraction of a millisecond a shard;
each shard still ends on its own (its outcome, its retries, its ledger entry). The actors tell a small progress actor which images they are on, for
progress within shards and to name the image in progress when a worker is lost. Only this
module (with :mod:`pipeline.running.ray_worker`, :mod:`pipeline.running.ray_session` and
:mod:`pipeline.running.backends`) touches Ray.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any

from pipeline.errors import SetupError, describe, is_out_of_memory, plain
from pipeline.running.executors import Outcome, OutcomeKind, failure_kind
from pipeline.running.pool import Node, Placement, missing, placements, shortfall
from pipeline.running.ray_worker import (
    DONE,
    RAISED,
    BoardNotes,
    ChainWorker,
    ProgressBoard,
    WireEnd,
    result_from_wire,
    task_to_wire,
)
from pipeline.running.stages import ShardSettings, ShardTask
from pipeline.running.worker import SegmenterFactory

log = logging.getLogger(__name__)

POLL_S = 1.0  # the longest wait() blocks, so the driver's progress bar moves within shards
GROW_S = 10.0  # how often the pool looks for nodes that joined (num_workers unset)
WAIT_REPORTED_S = 60.0  # a model still waiting for resources after this is said to be
BACKLOG_S = 0.001  # a wait that returns sooner found work waiting: the rest is collected too
# A call carries about CALL_S seconds of its worker's work (as measured on that worker), at
# most CALL_SHARDS shards. A Ray call costs the driver about a millisecond whatever it carries
# (benchmarks/dispatch_speed.py), so W workers cost the driver about W ms every CALL_S
# seconds: a tenth of it for a hundred GPUs, however small the shards. Calls no longer than
# that keep what sits queued on one worker short: a node that joins, the end of a run and a
# stop are not held up by another worker's queue.
CALL_S, CALL_SHARDS = 1.0, 8
SPEED_WEIGHT = 0.3  # of a call's newest measure in its worker's time per shard


@dataclass(slots=True, eq=False)  # each call is itself: compared by identity
class _Call:
    """Attempts sent to an actor in one call. Its deadline is one ``shard_timeout_s`` per
    attempt, counted from when it becomes first in its actor's queue: the actor labels its
    shards one after another."""

    ref: Any  # the actor call's result: how each attempt ended, in order
    tasks: list[ShardTask]
    started: float | None  # when it became first in its actor's queue


@dataclass(slots=True)
class _Slot:
    """One worker: its actor, the calls sent to it in order, and its model's state."""

    actor: Any
    setup_ref: Any = None
    setup_since: float = field(default_factory=time.monotonic)
    setup_failures: int = 0
    calls: deque[_Call] = field(default_factory=deque)
    placement: Placement = field(default_factory=lambda: Placement({"num_cpus": 1.0}))
    node_id: str | None = None  # the actor's Ray node, once known
    node: str = ""  # the same as the ledger names nodes: "host (node <id[:12]>)"
    waiting_reported: bool = False  # its model waited long for resources, and the log said so
    recover_ref: Any = None  # a call the actor answers once Ray has restarted it
    recover_since: float = 0.0
    shard_s: float | None = None  # its time per shard, as its calls end (unknown at first)
    last_end: float | None = None  # when its last call ended, while it has more in flight

    @property
    def ready(self) -> bool:
        return self.setup_ref is None and self.recover_ref is None

    @property
    def tasks(self) -> list[ShardTask]:
        """The attempts in flight on this worker, in the order they were sent."""
        return [task for call in self.calls for task in call.tasks]

    @property
    def in_flight(self) -> int:
        return sum(len(call.tasks) for call in self.calls)


class RayExecutor:
    """Model actors (``num_workers``; by default one per GPU of the cluster, else one) whose
    host tasks, on GPU clusters, hold one CPU each of those the actors leave; on CPU-only
    clusters the model is the bottleneck, so the actors hold the CPUs and the host tasks,
    light beside a model on a CPU, run unreserved.

    Every actor builds its model before it gets work; an actor whose model cannot be built
    ends the run (:class:`SetupError`), one that dies while building is rebuilt up to
    ``setup_attempts`` times. An actor runs ``per_worker`` attempts at a time, so one shard
    decodes and another encodes while the model labels a third; that bound is the
    backpressure that keeps memory flat. Attempts go in calls of about :data:`CALL_S` of the
    actor's measured work (one a call until its speed is known, and while another actor is
    still being built, so that a small run spreads over the actors), ``per_worker`` calls per
    actor in flight. A call whose turn on its actor lasts longer than ``shard_timeout_s`` per
    attempt it holds has its actor restarted, and the attempt on the model is reported as
    ``timeout``.

    Args:
        model_cpus: CPUs each actor holds (default: 1 beside a GPU; on CPU-only clusters an
            even share of the CPUs).
    """

    def __init__(
        self,
        factory: SegmenterFactory,
        settings: ShardSettings,
        output: str,
        num_workers: int | None = None,
        per_worker: int = 3,
        shard_timeout_s: float = 3600.0,
        setup_timeout_s: float = 1800.0,
        setup_attempts: int = 3,
        model_cpus: float | None = None,
        recover_timeout_s: float = 60.0,
    ) -> None:
        import ray

        self._ray = ray
        self._per_worker = per_worker
        self._shard_timeout_s = shard_timeout_s
        self._setup_timeout_s = setup_timeout_s
        self._setup_attempts = setup_attempts
        self._recover_timeout_s = recover_timeout_s
        self._num_workers, self._model_cpus = num_workers, model_cpus
        self._board: Any = ray.remote(num_cpus=0)(ProgressBoard).remote()
        self._progress: dict[int, tuple[int, tuple[Any, ...]]] = {}
        self._progress_read = 0.0
        self._flying: set[int] = set()  # the shards of the attempts in flight
        self._unsent: list[ShardTask] = []  # submitted, sent at the next wait()
        nodes = self._nodes()
        wanted = placements(nodes, num_workers, model_cpus)
        host_cpus = 1 if wanted[0].uses_gpu else 0
        self._actor_base = ray.remote(ChainWorker)
        self._actor_args = (
            factory,
            settings,
            output,
            BoardNotes(self._board),
            host_cpus,
            per_worker,
        )
        self._slots: list[_Slot] = []
        self._grown = time.monotonic()
        self._add(wanted)
        self._ask_autoscaler(wanted, nodes)
        log.info(
            "building %d model workers (%s), each loading the model; host tasks hold %d CPU each",
            len(wanted),
            wanted[0].resources,
            host_cpus,
        )

    @property
    def actors(self) -> list[Any]:
        return [slot.actor for slot in self._slots]

    @property
    def capacity(self) -> int:
        """In-flight attempts allowed now: only workers whose model is built take work."""
        return sum(self._per_worker * self._call_shards(s) for s in self._slots if s.ready)

    def submit(self, task: ShardTask) -> None:
        """Take ``task``; it is sent, with the others submitted since, at the next
        :meth:`wait` (so that several go in one call)."""
        if task.isolate:  # what the board holds of an earlier attempt must not name a culprit
            self._board.note.remote(task.shard.index, 0, ())
        self._unsent.append(task)
        self._flying.add(task.shard.index)

    def _send(self) -> None:
        """Send the submitted attempts, in calls of a few, each to the ready worker with the
        fewest in flight. An isolated attempt goes alone: its worker's loss must name it."""
        ready = [s for s in self._slots if s.ready]
        if not ready:  # they go once a worker is ready again
            return
        unsent, self._unsent = deque(self._unsent), []
        while unsent:
            slot = min(ready, key=lambda s: s.in_flight)
            limit = self._call_shards(slot)
            tasks = [unsent.popleft()]
            while unsent and len(tasks) < limit and not tasks[0].isolate and not unsent[0].isolate:
                tasks.append(unsent.popleft())
            ref = slot.actor.run.remote([task_to_wire(t) for t in tasks])
            slot.calls.append(_Call(ref, tasks, None if slot.calls else time.monotonic()))

    def _call_shards(self, slot: _Slot) -> int:
        """Shards a call to ``slot`` carries now: about :data:`CALL_S` of its work; one until
        its speed is known, and while another worker is still being built (unless that one
        has waited long to be placed), so the first ready one does not take a small run whole."""
        now = time.monotonic()
        building = any(
            s.setup_ref is not None and now - s.setup_since < WAIT_REPORTED_S for s in self._slots
        )
        if building or slot.shard_s is None:
            return 1
        return max(1, min(CALL_SHARDS, int(CALL_S / max(slot.shard_s, 1e-6))))

    def _measure(self, slot: _Slot, call: _Call) -> None:
        """Fold the ended call into its worker's time per shard: the time since its previous
        call ended (or since this one was sent to an idle worker), per shard it held."""
        now = time.monotonic()
        since = slot.last_end if slot.last_end is not None else call.started
        if since is not None:
            per_shard = (now - since) / len(call.tasks)
            old = slot.shard_s
            slot.shard_s = per_shard if old is None else old + SPEED_WEIGHT * (per_shard - old)
        slot.last_end = now

    def wait(self) -> list[Outcome]:
        """Block until something ends (at most :data:`POLL_S`); return every attempt that
        ended by then, and those whose deadline passed."""
        self._send()
        watched = self._watched()
        if not watched:
            return []
        self._follow_the_cluster()
        deadline = self._next_deadline()
        timeout = POLL_S if deadline is None else min(deadline, POLL_S)
        due = None if deadline is None else time.monotonic() + deadline
        refs = list(watched)
        since = time.monotonic()
        ready, _ = self._ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if ready and len(refs) > 1 and time.monotonic() - since < BACKLOG_S:
            # one had ended before the call: others may have too, so all of them in one call
            ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        ended: list[Outcome] = []
        for ref in ready:
            slot = watched[ref]
            if ref is slot.setup_ref:
                self._setup_ended(slot)
            elif ref is slot.recover_ref:
                self._recovered(slot)
            elif any(c.ref is ref for c in slot.calls):  # else it ended with its actor
                ended += self._call_ended(slot, ref)
        # even while other workers keep answering, a late one is restarted on time
        if due is not None and time.monotonic() >= due:
            ended += self._expire()
        return ended

    def images_in_flight(self) -> int:
        """Images labelled so far by the attempts in flight (the board, read once a second)."""
        now = time.monotonic()
        if now - self._progress_read >= POLL_S:
            self._progress_read = now
            with contextlib.suppress(self._ray.exceptions.RayError):  # progress is advisory
                self._progress = self._ray.get(self._board.read.remote(), timeout=POLL_S)
        return sum(n for shard, (n, _) in self._progress.items() if shard in self._flying)

    def shutdown(self) -> None:
        self._unsent.clear()
        for slot in self._slots:
            if slot.calls or not slot.ready:
                self._ray.kill(slot.actor)
            else:  # idle: it exits once it has sent what it holds (its tasks' events)
                slot.actor.__ray_terminate__.remote()
            self._forget(slot, list(slot.calls))
        self._ray.kill(self._board)

    def _watched(self) -> dict[Any, _Slot]:
        """Every reference wait() waits on: calls, setups and recoveries, with their slot."""
        refs = {c.ref: slot for slot in self._slots for c in slot.calls}
        refs.update({s.setup_ref: s for s in self._slots if s.setup_ref is not None})
        refs.update({s.recover_ref: s for s in self._slots if s.recover_ref is not None})
        return refs

    def _forget(self, slot: _Slot, calls: list[_Call]) -> None:
        """Take ended calls off their slot; the next one's turn starts."""
        for call in calls:
            slot.calls.remove(call)
            self._flying.difference_update(t.shard.index for t in call.tasks)
        if slot.calls and slot.calls[0].started is None:
            slot.calls[0].started = time.monotonic()
        if not slot.calls:  # idle: its next call's time starts when it is sent
            slot.last_end = None

    # ---- setup --------------------------------------------------------------------------

    def _setup_ended(self, slot: _Slot) -> None:
        exceptions = self._ray.exceptions
        try:
            slot.node_id = self._ray.get(slot.setup_ref)
            slot.node = self._node_name(slot.node_id)
            slot.setup_ref = None
            log.info("model worker ready (%d of %d)", self._ready(), len(self._slots))
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
        slot.setup_ref = None
        self._recover(slot)  # its model is built again once it answers

    # ---- attempts -----------------------------------------------------------------------

    def _call_ended(self, slot: _Slot, ref: Any) -> list[Outcome]:
        call = next(c for c in slot.calls if c.ref is ref)
        outcomes, lost = self._call_outcomes(call)
        if lost is None:
            self._measure(slot, call)
            self._forget(slot, [call])
            # its results name their node themselves; the others get the worker's
            return [
                o if o.kind == OutcomeKind.DONE else replace(o, node=slot.node) for o in outcomes
            ]
        # The actor died: every call on it ended at once. Those it had answered keep their
        # outcomes; of the other attempts, the one on the model is the cause, and the rest
        # never had their turn.
        ended: list[Outcome] = []
        refs = [c.ref for c in slot.calls]
        answered, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        unanswered: list[ShardTask] = []
        for other in slot.calls:
            if other is not call and any(other.ref is r for r in answered):
                found, other_lost = self._call_outcomes(other)
                if other_lost is None:
                    ended += [replace(o, node=o.node or slot.node) for o in found]
                    continue
            unanswered += other.tasks
        cause, in_progress = self._on_the_model(unanswered)
        kind, error = lost.kind, lost.error
        if not self._node_alive(slot.node_id):  # preempted, or its raylet crashed
            kind = OutcomeKind.NODE_LOST
            error = f"NodeLost: the node of its model worker was lost ({error})"
        ended.append(
            Outcome(cause.shard.index, kind, error=error, in_progress=in_progress, node=slot.node)
        )
        ended += [_interrupted(t) for t in unanswered if t is not cause]
        self._forget(slot, list(slot.calls))
        self._recover(slot)
        return ended

    def _call_outcomes(self, call: _Call) -> tuple[list[Outcome], Outcome | None]:
        """The outcome of each of the call's attempts; or, when its actor was lost, none and
        how the loss reads (``died`` or ``oom``, for the attempt found on the model).

        An attempt's error is our code's, or Ray's when one of its host tasks was lost (that
        attempt alone ends, as ``died`` or ``oom``: the actor and the attempts beside it go
        on). A call that failed as a whole for another reason fails each of its attempts.
        """
        exceptions = self._ray.exceptions
        try:
            ends = self._ray.get(call.ref)
        except exceptions.RayError as err:
            if not isinstance(err, exceptions.RayTaskError) and isinstance(err, _lost(exceptions)):
                kind = OutcomeKind.OOM if is_out_of_memory(err) else OutcomeKind.DIED
                return [], Outcome(-1, kind, error=_first_line(err))
            if not isinstance(err, exceptions.RayTaskError):
                raise
            ends = [(RAISED, err, plain(str(err)))] * len(call.tasks)
        return [self._ended(t, end) for t, end in zip(call.tasks, ends, strict=True)], None

    def _ended(self, task: ShardTask, end: WireEnd) -> Outcome:
        """One attempt's outcome from how the actor said it ended (:func:`end_to_wire`)."""
        index = task.shard.index
        if end[0] == DONE:
            return Outcome(index, OutcomeKind.DONE, result=result_from_wire(end[1]))
        _, err, text = end
        cause = getattr(err, "cause", None) or err
        if isinstance(cause, _lost(self._ray.exceptions)):  # a host task's worker was lost
            kind = OutcomeKind.OOM if is_out_of_memory(err) else OutcomeKind.DIED
            return Outcome(index, kind, error=_first_line(cause))
        if isinstance(cause, SetupError):
            return Outcome(index, OutcomeKind.SETUP, error=cause.cause, traceback=cause.traceback)
        return Outcome(index, failure_kind(cause), error=describe(cause), traceback=text)

    def _on_the_model(self, tasks: list[ShardTask]) -> tuple[ShardTask, tuple[Any, ...]]:
        """Of a worker's attempts, the one the board last heard it labelling (else the first),
        and the ids of the images it was on (maybe none)."""
        try:
            board = self._ray.get(self._board.read.remote(), timeout=10)
        except self._ray.exceptions.RayError:
            board = {}
        for task in tasks:
            _, in_progress = board.get(task.shard.index, (0, ()))
            if in_progress:
                return task, tuple(in_progress)
        return tasks[0], ()

    def _next_deadline(self) -> float | None:
        """Seconds until the earliest running call or pending setup is overdue."""
        now = time.monotonic()
        ends = [
            s.calls[0].started + self._shard_timeout_s * len(s.calls[0].tasks)
            for s in self._slots
            if s.calls and s.calls[0].started is not None
        ]
        ends += [s.setup_since + self._setup_timeout_s for s in self._slots if s.setup_ref]
        ends += [s.recover_since + self._recover_timeout_s for s in self._slots if s.recover_ref]
        return max(0.0, min(ends) - now) if ends else None

    def _expire(self) -> list[Outcome]:
        """Restart the actors of overdue calls; fail the run if no model could be built."""
        now = time.monotonic()
        self._drop_unrecovered(now)
        late_setup = [s for s in self._slots if s.setup_ref is not None]
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
            head = slot.calls[0] if slot.calls else None
            if head is None or head.started is None:
                continue
            if now - head.started < self._shard_timeout_s * len(head.tasks):
                continue
            # the attempt holding the model is the late one (the oldest may wait behind it)
            late, _ = self._on_the_model(slot.tasks)
            log.warning(
                "%s ran past its %.0f s deadline; restarting its worker",
                late.shard.name,
                self._shard_timeout_s,
            )
            # its host tasks die with it: Ray ends the tasks of an owner that is gone
            self._ray.kill(slot.actor, no_restart=False)
            message = (
                f"TimeoutError: the attempt ran past its {self._shard_timeout_s:.0f} s deadline "
                "(--shard-timeout); its worker was restarted"
            )
            ended.append(
                Outcome(late.shard.index, OutcomeKind.TIMEOUT, error=message, node=slot.node)
            )
            ended += [_interrupted(t) for t in slot.tasks if t is not late]
            self._forget(slot, list(slot.calls))
            self._recover(slot)
        return ended

    def _recover(self, slot: _Slot) -> None:
        """Take the slot out of the pool until its actor answers again (Ray restarts it,
        maybe on another node): attempts sent meanwhile would fail at once and burn their
        tries. Nothing waits here: the other actors keep working."""
        slot.recover_ref, slot.recover_since = slot.actor.pid.remote(), time.monotonic()

    # ---- the pool ---------------------------------------------------------------------------

    def _nodes(self) -> list[Node]:
        return [
            Node(n["NodeID"], n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0))
            for n in self._ray.nodes()
            if n["Alive"]
        ]

    def _add(self, wanted: list[Placement]) -> None:
        """Start an actor per placement; each builds its model before it takes work."""
        for placement in wanted:
            slot = _Slot(self._start(placement), placement=placement)
            slot.setup_ref, slot.setup_since = slot.actor.build.remote(), time.monotonic()
            self._slots.append(slot)

    def _start(self, placement: Placement) -> Any:
        return self._actor_base.options(**placement.options()).remote(*self._actor_args)

    def _follow_the_cluster(self) -> None:
        """With ``num_workers`` unset, every ``GROW_S``: nodes that joined get actors; and a
        model that has waited a minute for resources is said to, once."""
        now = time.monotonic()
        for slot in self._slots:
            waited = now - slot.setup_since
            if (
                slot.setup_ref is not None
                and waited >= WAIT_REPORTED_S
                and not slot.waiting_reported
            ):
                slot.waiting_reported = True
                log.warning(
                    "a model worker has waited %.0f s to be placed (it asks %s): the cluster "
                    "may not have a node that holds it (see --num-workers, --model-cpus)",
                    waited,
                    slot.placement.resources,
                )
        if self._num_workers is not None or now - self._grown < GROW_S:
            return
        self._grown = now
        wanted = placements(self._nodes(), None, self._model_cpus)
        new = missing(wanted, [s.placement for s in self._slots])
        if new:
            log.info("the cluster grew: starting %d more model workers", len(new))
            self._add(new)

    def _ask_autoscaler(self, wanted: list[Placement], nodes: list[Node]) -> None:
        """Ask an autoscaling cluster for what the workers need beyond what it holds; the run
        starts with what exists and takes the rest as nodes arrive."""
        short = shortfall(wanted, nodes)
        if not short:
            return
        log.warning(
            "%d model workers need %s more than the cluster holds now: they start as it grows "
            "(on a fixed cluster, lower --num-workers)",
            len(wanted),
            short,
        )
        bundles = [
            {"CPU": p.resources.get("num_cpus", 0), "GPU": p.resources.get("num_gpus", 0)}
            for p in wanted
        ]
        try:
            from ray.autoscaler.sdk import request_resources

            request_resources(bundles=[{k: v for k, v in b.items() if v} for b in bundles])
        except Exception as err:  # no autoscaler: nothing to ask
            log.info("could not ask the autoscaler for more nodes: %s", describe(err))

    def _recovered(self, slot: _Slot) -> None:
        """The slot's call after a loss answered: its model is built again (the slot joins
        the pool once it is, on whichever node the actor now runs), or it is asked again."""
        exceptions = self._ray.exceptions
        try:
            self._ray.get(slot.recover_ref)
        except exceptions.ActorDiedError:  # out of restarts: a fresh actor takes its place
            slot.actor = self._start(slot.placement)
        except (exceptions.ActorUnavailableError, exceptions.RayActorError):
            slot.recover_ref = slot.actor.pid.remote()  # still restarting: ask again
            return
        slot.recover_ref = None
        slot.setup_ref, slot.setup_since = slot.actor.build.remote(warm=True), time.monotonic()

    def _drop_unrecovered(self, now: float) -> None:
        """Drop the slots whose actor could not be placed again in time (its node lost, and
        no other node free): the pool shrinks and the run goes on with the others."""
        late = [
            s
            for s in self._slots
            if s.recover_ref is not None and now - s.recover_since >= self._recover_timeout_s
        ]
        for slot in late:
            self._ray.kill(slot.actor, no_restart=True)
            self._slots.remove(slot)
            log.warning(
                "a model worker could not be placed again within %.0f s (its node lost, and "
                "no node free for it); going on with %d",
                self._recover_timeout_s,
                len(self._slots),
            )
        if late and not self._slots:
            raise SetupError(
                "every model worker was lost and none could be placed again within "
                f"{self._recover_timeout_s:.0f} s: the cluster has no node left that can hold one"
            )

    def _ready(self) -> int:
        return sum(s.ready for s in self._slots)

    def _node_name(self, node_id: str | None) -> str:
        """``node_id`` as :meth:`LabelWorker.node` names it (host, and the id's first 12
        characters); a lost node is still listed by Ray, so its attempts keep their node."""
        if node_id is None:
            return ""
        try:
            hosts = {n["NodeID"]: n.get("NodeManagerHostname", "") for n in self._ray.nodes()}
        except self._ray.exceptions.RayError:
            hosts = {}
        return f"{hosts.get(node_id) or '?'} (node {node_id[:12]})"

    def _node_alive(self, node_id: str | None) -> bool:
        """Whether Ray still counts ``node_id`` among its live nodes (unknown: yes)."""
        if node_id is None:
            return True
        try:
            return any(n["NodeID"] == node_id and n["Alive"] for n in self._ray.nodes())
        except self._ray.exceptions.RayError:
            return True


def _interrupted(task: ShardTask) -> Outcome:
    return Outcome(
        task.shard.index,
        OutcomeKind.INTERRUPTED,
        error="interrupted: queued on a worker that was lost or restarted",
    )


def _lost(exceptions: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors for a worker process that is gone (killed, crashed, out of memory)."""
    return (
        exceptions.OutOfMemoryError,
        exceptions.RayActorError,
        exceptions.WorkerCrashedError,
        exceptions.ObjectLostError,
    )


def _first_line(err: BaseException) -> str:
    text = plain(str(err)).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"
