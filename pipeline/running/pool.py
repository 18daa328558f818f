"""How many model actors a cluster holds, and where: a plain function of its nodes.

On GPU clusters, one actor per GPU (``--num-workers`` of them if given), placed by Ray and
spread across nodes. On CPU clusters the model is the bottleneck, so actors hold the CPUs:
with ``--num-workers`` unset, one actor per node holding that node's CPUs and pinned there (the
pool follows the cluster as nodes come and go); with it set, that many actors of an even share
of the CPUs, never more than one node has. Knows nothing about Ray: the executor passes the
nodes it sees.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Node:
    """A live node, as the pool sees it: its Ray id and what it holds."""

    node_id: str
    cpus: float
    gpus: float = 0.0


@dataclass(frozen=True, slots=True)
class Placement:
    """One model actor to start: its Ray resources, and the node it is pinned to (``None``:
    wherever Ray spreads it)."""

    resources: dict[str, float] = field(hash=False)
    node_id: str | None = None

    def options(self) -> dict[str, Any]:
        """Ray actor options: the resources and the scheduling strategy."""
        options: dict[str, Any] = {"max_restarts": -1, "max_task_retries": 0, **self.resources}
        if self.node_id is None:  # one actor per node where it can, so a lost node takes few
            options["scheduling_strategy"] = "SPREAD"
        else:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                self.node_id, soft=False
            )
        return options

    @property
    def uses_gpu(self) -> bool:
        return self.resources.get("num_gpus", 0) > 0


def placements(
    nodes: Sequence[Node], num_workers: int | None, model_cpus: float | None
) -> list[Placement]:
    """The actors the cluster of ``nodes`` should hold.

    Args:
        nodes: the live nodes.
        num_workers: actors wanted (``None``: one per GPU, or per node on CPU clusters).
        model_cpus: CPUs each actor holds (``None``: 1 beside a GPU, else the node's CPUs or
            an even share).
    """
    gpus = sum(n.gpus for n in nodes)
    if gpus >= 1:
        count = num_workers or int(gpus)
        each = {"num_gpus": 1.0, "num_cpus": 1.0 if model_cpus is None else model_cpus}
        return [Placement(dict(each)) for _ in range(count)]
    if num_workers is None:
        usable = [n for n in nodes if n.cpus >= 1] or list(nodes[:1])
        return [
            Placement(
                {"num_cpus": _cpus(model_cpus if model_cpus is not None else n.cpus)}, n.node_id
            )
            for n in usable
        ]
    total = sum(n.cpus for n in nodes) or 1.0
    largest = max((n.cpus for n in nodes), default=1.0) or 1.0
    # Ray caps a CPU actor's torch threads at its num_cpus: share the CPUs out (a fraction of a
    # CPU each when there are more actors than CPUs), never more than one node holds.
    share = min(total / num_workers, largest) if model_cpus is None else model_cpus
    return [Placement({"num_cpus": _cpus(share)}) for _ in range(num_workers)]


def missing(wanted: Iterable[Placement], have: Iterable[Placement]) -> list[Placement]:
    """The placements of ``wanted`` that ``have`` lacks: pinned ones by node, the others by
    count (the pool grows; it never shrinks here: lost actors are dropped by the executor)."""
    have = list(have)
    pinned = {p.node_id for p in have if p.node_id is not None}
    loose = sum(p.node_id is None for p in have)
    new = [p for p in wanted if p.node_id is not None and p.node_id not in pinned]
    spread = [p for p in wanted if p.node_id is None]
    return new + spread[loose:]


def shortfall(wanted: Sequence[Placement], nodes: Sequence[Node]) -> dict[str, float]:
    """What ``wanted`` asks beyond what ``nodes`` hold, by resource (empty: it fits)."""
    asked = {"CPU": 0.0, "GPU": 0.0}
    for p in wanted:
        asked["CPU"] += p.resources.get("num_cpus", 0)
        asked["GPU"] += p.resources.get("num_gpus", 0)
    held = {"CPU": sum(n.cpus for n in nodes), "GPU": sum(n.gpus for n in nodes)}
    return {k: asked[k] - held[k] for k in asked if asked[k] > held[k]}


def _cpus(share: float) -> float:
    return float(int(share)) if share >= 1 else share
