"""A node lost mid-run, on a simulated cluster (``ray.cluster_utils.Cluster``): a head with no
CPUs and two one-CPU raylets, one of which is killed while the run labels."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections import Counter

import fakes
import pytest
from fakes import BrightnessSegmenter, Slowed
from test_cluster import ray_cli
from test_pipeline_local import assert_same_outputs, config_for, ledger_of, make_dataset

from pipeline import LocalBackend, RayBackend, run_labelling

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_a_node_lost_mid_run_the_run_goes_on_and_equals_a_clean_run(tmp_path):
    """A spot node vanishes: its shards are retried on the node left, nothing waits for the
    actor that cannot be placed again, and the output equals a clean run's. Before: the
    dispatch loop blocked on the restarting actor and the run crashed after 303 s."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    root = make_dataset(tmp_path, count=12)
    clean = config_for(root, output=str(root / "clean"), shard_size=1)
    assert run_labelling(clean, LocalBackend(BrightnessSegmenter())).ok
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    doomed = cluster.add_node(num_cpus=1)
    survivor = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cloudpickle.register_pickle_by_value(fakes)
    ray.init(address=cluster.address)
    try:
        config = config_for(root, shard_size=1, num_workers=2, model_cpus=1)
        backend = RayBackend(factory=Slowed(BrightnessSegmenter(), 0.5))
        shards = root / "out" / "shards"

        def kill_when_started() -> None:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(shards.glob("shard-*.json"))) < 3:
                time.sleep(0.05)
            cluster.remove_node(doomed, allow_graceful=False)

        killer = threading.Thread(target=kill_when_started, daemon=True)
        killer.start()
        started = time.monotonic()
        summary = run_labelling(config, backend)
        killer.join(timeout=5)
        assert summary.ok and summary.images_labelled == 12
        assert time.monotonic() - started < 120  # no wait on the actor that has no node
        # The doomed actor had attempts in flight (a few per actor are, and 9 shards were
        # left): they are retried as node_lost (or died, when Ray saw the actor go first).
        lost = summary.retries.get("node_lost", 0) + summary.retries.get("died", 0)
        assert lost >= 1 and set(summary.retries) <= {"node_lost", "died"}, summary.retries
        entries = ledger_of(root / "out")
        in_ledger = sum((Counter(e.retries) for e in entries.values()), Counter())
        assert in_ledger == Counter(summary.retries)  # each retry counted once, by its cause
        survivor_node = f"(node {survivor.node_id[:12]})"
        doomed_node = f"(node {doomed.node_id[:12]})"
        retried = [e for e in entries.values() if e.retries]
        assert retried and all(e.node.endswith(survivor_node) for e in retried)
        # ... and each retry is counted on the node that was lost, by its cause
        on_nodes = Counter()
        for e in retried:
            assert all(node.endswith(doomed_node) for node in e.retry_nodes), e.retry_nodes
            for causes in e.retry_nodes.values():
                on_nodes.update(causes)
        assert on_nodes == in_ledger
        assert all(e.node.endswith((survivor_node, doomed_node)) for e in entries.values())
        assert_same_outputs(root / "out", root / "clean")
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(fakes)
        cluster.shutdown()


def test_a_node_that_joins_mid_run_gets_a_model_worker(tmp_path):
    """Before: the pool was counted once at start; a node added at 20 % ran nothing."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    from pipeline.formats.ledger import Ledger
    from pipeline.formats.storage import Storage

    root = make_dataset(tmp_path, count=40)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    cloudpickle.register_pickle_by_value(fakes)
    ray.init(address=cluster.address)
    try:
        config = config_for(root, shard_size=1, model_cpus=1)
        shards = root / "out" / "shards"

        joined: list[subprocess.Popen] = []

        def join_when_started() -> None:  # a raylet of its own, as a new node joins
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and len(list(shards.glob("shard-*.json"))) < 2:
                time.sleep(0.05)
            command = [ray_cli(), "start", "--address", cluster.address, "--num-cpus", "1"]
            joined.append(subprocess.Popen([*command, "--block"], start_new_session=True))

        joiner = threading.Thread(target=join_when_started, daemon=True)
        joiner.start()
        try:
            summary = run_labelling(config, RayBackend(factory=Slowed(BrightnessSegmenter(), 1.0)))
        finally:
            joiner.join(timeout=5)
            for process in joined:  # only what this test started, by its process group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        assert summary.ok and summary.images_labelled == 40
        nodes = {e.node for e in Ledger(Storage(str(root / "out"))).read().values()}
        assert len(nodes) == 2, nodes  # the node that joined labelled shards too
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(fakes)
        cluster.shutdown()
