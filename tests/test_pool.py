"""The pool's size and placement, as a plain function of the cluster's nodes."""

from __future__ import annotations

from pipeline.running.pool import Node, Placement, missing, placements, shortfall


def test_gpu_clusters_get_one_actor_per_gpu_spread_by_ray():
    nodes = [Node("a", 16, 4), Node("b", 16, 4), Node("c", 8, 0)]
    wanted = placements(nodes, None, None)
    assert len(wanted) == 8 and all(p.node_id is None and p.uses_gpu for p in wanted)
    assert wanted[0].resources == {"num_gpus": 1.0, "num_cpus": 1.0}
    assert (
        len(placements(nodes, 3, 2)) == 3 and placements(nodes, 3, 2)[0].resources["num_cpus"] == 2
    )
    assert wanted[0].options()["scheduling_strategy"] == "SPREAD"


def test_cpu_clusters_get_one_actor_per_node_holding_its_cpus():
    """Before: with three 1-CPU nodes the job asked for one actor of 3 CPUs, which no node
    could hold, and sat at 0/N until the setup timeout."""
    nodes = [Node("a", 1), Node("b", 1), Node("c", 1), Node("head", 0)]
    wanted = placements(nodes, None, None)
    assert [(p.node_id, p.resources) for p in wanted] == [
        (n, {"num_cpus": 1.0}) for n in ("a", "b", "c")
    ]
    hex_node = "ab" * 28  # Ray checks a node id's form
    pinned = placements([Node(hex_node, 1)], None, None)[0].options()
    assert (
        pinned["scheduling_strategy"].node_id == hex_node and not pinned["scheduling_strategy"].soft
    )
    assert placements([Node("solo", 2)], None, None)[0].resources == {"num_cpus": 2.0}


def test_a_worker_count_shares_the_cpus_but_never_more_than_a_node_holds():
    """Before: --num-workers 3 on two 1-CPU nodes made actors of 0.67 CPU, silently."""
    two = [Node("a", 1), Node("b", 1)]
    assert [p.resources["num_cpus"] for p in placements(two, 3, None)] == [2 / 3] * 3
    big_and_small = [Node("a", 8), Node("b", 2)]
    assert placements(big_and_small, 1, None)[0].resources == {"num_cpus": 8.0}  # not 10
    assert shortfall(placements(two, 3, 1), two) == {"CPU": 1.0}
    assert not shortfall(placements(two, 2, 1), two)


def test_the_pool_grows_by_what_is_missing():
    have = placements([Node("a", 1)], None, None)
    wanted = placements([Node("a", 1), Node("b", 2)], None, None)
    assert missing(wanted, have) == [Placement({"num_cpus": 2.0}, "b")]
    gpus = placements([Node("a", 8, 2)], None, None)
    more = placements([Node("a", 8, 2), Node("b", 8, 2)], None, None)
    assert len(missing(more, gpus)) == 2 and not missing(gpus, gpus)
