"""The dispatch loop's contract with a scripted executor (no Ray, no model): ``todo`` read one
shard at a time from any sequence, retries requeued after the first pass, every outcome in
the ledger; and what crosses between the driver and the model actors, packed as Ray packs it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import msgpack
import pytest

from pipeline.formats.descriptors import Shard
from pipeline.formats.ledger import Ledger, ShardEntry, ShardState
from pipeline.formats.storage import Storage
from pipeline.running.dispatch import dispatch
from pipeline.running.executors import Outcome, OutcomeKind
from pipeline.running.ray_worker import (
    result_from_wire,
    result_to_wire,
    task_from_wire,
    task_to_wire,
)
from pipeline.running.stages import ShardResult, ShardTask


def shard(index: int, count: int = 2) -> Shard:
    return Shard(index, "m.parquet", 2 * index, count, 1 + 2 * index, f"{index:064x}")


class Lazy(Sequence[Shard]):
    """Shards made when read, as a columnar table makes them; it counts the reads."""

    def __init__(self, n: int) -> None:
        self.n, self.read = n, []

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, k: int) -> Shard: ...

    @overload
    def __getitem__(self, k: slice) -> Sequence[Shard]: ...

    def __getitem__(self, k: int | slice) -> Shard | Sequence[Shard]:
        if isinstance(k, slice):
            raise AssertionError("dispatch never slices todo")
        if not 0 <= k < self.n:
            raise IndexError(k)
        self.read.append(k)
        return shard(k)


class Scripted:
    """Ends attempts oldest first, ``capacity`` in flight; ``script`` maps (shard, how many
    times it was sent) to an outcome kind (default: done)."""

    def __init__(self, capacity: int, script: dict[tuple[int, int], OutcomeKind]) -> None:
        self.capacity, self.script = capacity, script
        self.flying: list[ShardTask] = []
        self.sent: list[tuple[int, int]] = []
        self.most_in_flight = 0

    def submit(self, task: ShardTask) -> None:
        self.flying.append(task)
        self.sent.append((task.shard.index, task.attempt))
        self.most_in_flight = max(self.most_in_flight, len(self.flying))

    def wait(self) -> list[Outcome]:
        task = self.flying.pop(0)
        index = task.shard.index
        sends = sum(sent == index for sent, _ in self.sent)
        kind = self.script.get((index, sends), OutcomeKind.DONE)
        if kind != OutcomeKind.DONE:
            # an attempt that did not finish names the node it ran on, as the Ray executor does
            return [Outcome(index, kind, error=f"{kind} on purpose", node=f"h (node n{sends})")]
        result = ShardResult(index, task.shard.count, 0, 3, {}, 0.5, 0.25, "host (node n1)")
        return [Outcome(index, kind, result=result)]

    def images_in_flight(self) -> int:
        return 0

    def shutdown(self) -> None:
        pass


def ledger_for(tmp_path, todo: Sequence[Shard]) -> Ledger:
    ledger = Ledger(Storage(str(tmp_path)))
    ledger.compact({i: ShardEntry.planned(shard(i)) for i in range(len(todo))})
    return ledger


def test_todo_is_read_once_per_shard_and_retries_follow_the_first_pass(tmp_path):
    todo = Lazy(6)
    ledger = ledger_for(tmp_path, todo)
    script = {(1, 1): OutcomeKind.DIED, (4, 1): OutcomeKind.TIMEOUT, (1, 2): OutcomeKind.OOM}
    executor = Scripted(capacity=2, script=script)
    retries = dispatch(executor, todo, ledger, max_attempts=3, retried=set())
    assert retries == {"died": 1, "timeout": 1, "oom": 1}
    # one pass for the progress bar's total, then each shard read once as it is sent
    assert todo.read == [*range(6), *range(6)]
    first_pass = [(i, 1) for i in range(6)]
    assert executor.sent == [*first_pass, (1, 2), (4, 2), (1, 3)]
    assert executor.most_in_flight == 2
    ledger.flush()
    entries = Ledger(Storage(str(tmp_path))).read()
    assert all(e.state == ShardState.DONE for e in entries.values())
    assert entries[1].attempts == 3 and entries[1].retries == {"died": 1, "oom": 1}
    assert entries[1].retry_nodes == {"h (node n1)": {"died": 1}, "h (node n2)": {"oom": 1}}
    assert entries[4].attempts == 2 and entries[4].retries == {"timeout": 1}
    assert entries[4].retry_nodes == {"h (node n1)": {"timeout": 1}}
    assert entries[0].retry_nodes == {}
    ledger.compact()  # and through the compacted state's Parquet, as JSON text
    assert Ledger(Storage(str(tmp_path))).read()[1].retry_nodes == entries[1].retry_nodes
    assert entries[0].node == "host (node n1)" and entries[0].annotations == 3
    assert entries[0].images_done == 2 and entries[0].updated  # time-stamped when written


def test_an_attempt_given_back_costs_nothing_and_a_lost_node_is_counted(tmp_path):
    todo = [shard(i) for i in range(3)]
    ledger = ledger_for(tmp_path, todo)
    script = {(0, 1): OutcomeKind.INTERRUPTED, (2, 1): OutcomeKind.NODE_LOST}
    executor = Scripted(3, script)
    retries = dispatch(executor, todo, ledger, max_attempts=1, retried=set())
    assert retries == {"node_lost": 1}
    assert executor.sent == [(0, 1), (1, 1), (2, 1), (0, 1), (2, 1)]
    entries = ledger.entries
    assert [entries[i].attempts for i in range(3)] == [1, 1, 1]  # max_attempts=1 held
    assert entries[2].retries == {"node_lost": 1}
    assert entries[2].retry_nodes == {"h (node n1)": {"node_lost": 1}}
    assert entries[0].retry_nodes == {}  # interrupted: never ran, no retry
    assert all(e.state == ShardState.DONE for e in entries.values())


def test_ledger_segments_hold_every_field_as_written(tmp_path):
    ledger = Ledger(Storage(str(tmp_path)))
    planned = {i: ShardEntry.planned(shard(i)) for i in range(3)}
    ledger.compact(planned)
    written = ledger.write(
        planned[1],
        state=ShardState.FAILED,
        retries={"died": 2},
        failures_by_error={"OSError": 1},
        error="RuntimeError: x",
        traceback="Traceback ...",
        node="h (node 1)",
    )
    ledger.flush()
    again = Ledger(Storage(str(tmp_path))).read()
    assert again[1] == written and again[0] == planned[0]
    assert written.retries is not planned[1].retries  # the entry written is a new one
    assert planned[1].state == ShardState.PENDING and planned[1].retries == {}


@pytest.mark.parametrize("image_id", ["img/3", 7])
def test_tasks_and_results_cross_as_plain_values(image_id):
    task = ShardTask(
        shard(5, 9),
        attempt=3,
        final=True,
        retry_failed=False,
        isolate=True,
        excluded=((image_id, "WorkerLost", "lost alone"),),
    )
    packed = msgpack.packb(task_to_wire(task))  # no pickling: msgpack takes it or raises
    assert task_from_wire(msgpack.unpackb(packed)) == task
    result = ShardResult(5, 8, 1, 12, {"OSError": 1}, 1.5, 0.5, "host (node abc)")
    assert result_from_wire(msgpack.unpackb(msgpack.packb(result_to_wire(result)))) == result
