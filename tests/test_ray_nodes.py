"""On a simulated cluster of two nodes (``ray.cluster_utils.Cluster``: two raylets on this
machine): model actors spread across nodes, each shard's host stages run on its actor's
node, and the ledger records which node labelled each shard."""

from __future__ import annotations

import fakes
import pytest
from fakes import BrightnessSegmenter
from test_pipeline_local import config_for, ledger_of, make_dataset

import jobs.status as status_job
from pipeline import RayBackend, run_labelling

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_nodes():
    ray = pytest.importorskip("ray")
    from ray import cloudpickle
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=2)  # the only node a 2-CPU actor fits on
    cluster.wait_for_nodes()
    cloudpickle.register_pickle_by_value(fakes)
    ray.init(address=cluster.address)
    try:
        yield ray
    finally:
        ray.shutdown()
        cloudpickle.unregister_pickle_by_value(fakes)
        cluster.shutdown()  # ends the raylets this fixture started, and only those


def test_actors_spread_and_the_ledger_records_each_shards_node(two_nodes, tmp_path, capsys):
    root = make_dataset(tmp_path, count=8)
    config = config_for(root, shard_size=1, num_workers=2, model_cpus=1)
    summary = run_labelling(config, RayBackend(factory=BrightnessSegmenter()))
    assert summary.ok and summary.images_labelled == 8
    nodes = {e.node for e in ledger_of(root / "out").values()}
    ray_nodes = {n["NodeID"][:12] for n in two_nodes.nodes() if n["Alive"]}
    assert len(nodes) == 2 and {n.split("(node ")[1].rstrip(")") for n in nodes} == ray_nodes
    assert status_job.main([str(root / "out")]) == 0
    out = capsys.readouterr().out
    assert sum(f"{n}: " in out for n in nodes) == 2


def test_host_stages_run_on_their_actors_node(two_nodes, tmp_path):
    """The one actor fits only on the second node; without affinity Ray would run the
    host tasks beside the driver, on the head."""
    import time

    from ray.util.state import list_tasks

    root = make_dataset(tmp_path, count=6)
    config = config_for(root, shard_size=1, num_workers=1, model_cpus=2)
    since_ms = time.time() * 1000
    assert run_labelling(config, RayBackend(factory=BrightnessSegmenter())).ok
    ours: list = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # task events reach the state API a little late
        try:
            tasks = list_tasks(detail=True, limit=10_000, raise_on_missing_output=False)
        except Exception as err:  # the state API needs the dashboard's agent
            pytest.skip(f"Ray's state API is not available here: {err}")
        ours = [t for t in tasks if (t.start_time_ms or 0) >= since_ms and t.state == "FINISHED"]
        names = [t.func_or_class_name for t in ours]
        # the host tasks' events come from the actor, its calls' from the driver: both
        if sum(n in ("decode_stage", "encode_stage") for n in names) >= 12 and (
            "ChainWorker.run" in names
        ):
            break
        time.sleep(1)
    [actor_node] = {t.node_id for t in ours if t.func_or_class_name == "ChainWorker.run"}
    head = next(
        n["NodeID"] for n in two_nodes.nodes() if n["Alive"] and n["Resources"].get("CPU") == 1
    )
    assert actor_node != head
    host = [t for t in ours if t.func_or_class_name in ("decode_stage", "encode_stage")]
    assert len(host) == 12 and all(t.node_id == actor_node for t in host)
