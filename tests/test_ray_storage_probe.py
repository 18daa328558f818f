"""The driver's check that every node of a cluster sees the manifest and the output.

Without Ray: what one node does (:func:`probe_node`) and the refusal's message. On a
simulated cluster: a head and a second node whose raylet runs in a mount namespace of its
own, where a tmpfs hides one folder, as a node without the shared file system sees its
local disk: production code has no test hook, the node really cannot see the files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from test_cluster import ray_cli
from test_pipeline_local import make_dataset

import jobs.label as label_job
from pipeline import RayBackend
from pipeline.errors import InputError
from pipeline.formats.layout import PROBES
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest, ManifestFile, open_manifest
from pipeline.running.storage_probe import (
    MAX_MANIFEST_PROBES,
    NodeName,
    Unreachable,
    check_shared_storage,
    driver_probe,
    node_probe,
    probe_node,
    probe_paths,
    refusal,
)

NODE = "ab" * 28  # a Ray node id: 56 hex digits


# ---- one node's view, without Ray --------------------------------------------------------


def _manifest_file(tmp_path, rows=3):
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"image_id": list(range(rows)), "uri": ["x.png"] * rows}), path)
    return ManifestFile(str(path), rows)


def test_a_node_that_sees_everything_writes_its_probe_and_reports_nothing(tmp_path):
    output = Storage(str(tmp_path / "out"))
    output.write_atomic(driver_probe("t0"), b"t0")
    assert probe_node([_manifest_file(tmp_path)], output.root, "t0", NODE) == []
    assert output.read(node_probe("t0", NODE)) == NODE.encode()


def test_a_node_without_the_manifest_or_with_another_file_names_it(tmp_path):
    good = _manifest_file(tmp_path)
    output = Storage(str(tmp_path / "out"))
    output.write_atomic(driver_probe("t0"), b"t0")
    missing = ManifestFile(str(tmp_path / "elsewhere" / "m.parquet"), 3)
    other = ManifestFile(good.uri, 5)  # the driver counted 5 rows: a different file here
    problems = dict(probe_node([missing, other], output.root, "t0", NODE))
    assert "cannot read its Parquet footer" in problems[missing.uri]
    assert "FileNotFoundError" in problems[missing.uri] or "No such file" in problems[missing.uri]
    assert problems[other.uri] == "holds 3 rows here, 5 on the driver: not the same file"


def test_a_node_local_folder_of_the_same_name_is_not_the_output(tmp_path):
    """The node's disk has a folder at the output's path, but not the driver's files: the
    node writes nothing there (no stray folder of its own is made)."""
    output = tmp_path / "out"
    problems = probe_node([], str(output), "t0", NODE)
    [(path, problem)] = problems
    assert path == str(output) and "does not see the folder the driver writes" in problem
    assert not output.exists()
    Storage(str(output)).write_atomic(driver_probe("t0"), b"another run's token")
    [(_, problem)] = probe_node([], str(output), "t0", NODE)
    assert "not the same folder" in problem
    assert not (output / PROBES / f"t0.{NODE}").exists()


def test_object_store_paths_are_probed_the_same_way(s3_env):
    with s3_env.open_output_stream("data/m.parquet") as stream:
        pq.write_table(pa.table({"image_id": [1, 2], "uri": ["a.png", "b.png"]}), stream)
    output = Storage("s3://labels/run")
    output.write_atomic(driver_probe("t1"), b"t1")
    files = [ManifestFile("s3://data/m.parquet", 2), ManifestFile("s3://data/gone.parquet", 2)]
    [(path, problem)] = probe_node(files, output.root, "t1", NODE)
    assert path == "s3://data/gone.parquet" and "cannot read its Parquet footer" in problem
    assert output.read(node_probe("t1", NODE)) == NODE.encode()
    [(path, problem)] = probe_node([], "s3://labels/elsewhere", "t1", NODE)
    assert path == "s3://labels/elsewhere" and "does not see the folder" in problem


def test_the_manifest_files_probed_are_one_per_folder_and_few():
    files = tuple(ManifestFile(f"/data/part-{i // 3}/f{i}.parquet", 1) for i in range(60))
    chosen = probe_paths(Manifest("/data", files, ("image_id", "uri"), "string"))
    assert len(chosen) == MAX_MANIFEST_PROBES
    assert [f.uri for f in chosen[:2]] == ["/data/part-0/f0.parquet", "/data/part-1/f3.parquet"]


def test_the_refusal_names_each_node_the_path_and_the_fix():
    a = NodeName(NODE, "worker-a", "10.0.0.7")
    b = NodeName("cd" * 28, "worker-b", "10.0.0.8")
    err = refusal(
        [
            Unreachable(a, "/data/m.parquet", "cannot read its Parquet footer (FileNotFoundError)"),
            Unreachable(a, "/data/out", "the driver's probe file is not there"),
            Unreachable(b, "/data/out", "the probe did not answer within 60 s (a hung mount?)"),
        ]
    )
    assert isinstance(err, InputError)
    lines = str(err).splitlines()
    assert lines[0].startswith("2 node(s) of the Ray cluster cannot reach the run's files")
    assert lines[1] == (
        f"  worker-a (node {NODE[:12]}, 10.0.0.7): /data/m.parquet: cannot read its Parquet "
        "footer (FileNotFoundError)"
    )
    assert lines[3].startswith(f"  worker-b (node {'cd' * 6}, 10.0.0.8): /data/out: the probe")
    assert "shared file system mounted at the same path on every node" in lines[-1]
    assert "s3://" in lines[-1]


# ---- a cluster where one node cannot see a folder ----------------------------------------


def _namespace_command() -> list[str] | None:
    """``unshare`` for a private mount namespace (root, or an unprivileged user namespace)."""
    if shutil.which("unshare") is None:
        return None
    for command in (["unshare", "-m"], ["unshare", "-r", "-m"]):
        trial = subprocess.run([*command, "true"], capture_output=True, check=False)
        if trial.returncode == 0:
            return command
    return None


@pytest.fixture(scope="module")
def blind_node(tmp_path_factory):
    """A two-node cluster: the head sees every folder; the other node sees ``hidden`` empty
    (a tmpfs mounted over it in its raylet's mount namespace). Yields ``(ray, hidden, node)``."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    unshare = _namespace_command()
    if unshare is None:
        pytest.skip("no private mount namespace here (unshare -m) to hide a folder from a node")
    hidden = tmp_path_factory.mktemp("node-local")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    ray.init(address=cluster.address)
    script = 'mount -t tmpfs tmpfs "$1" && exec "$2" start --address "$3" --num-cpus 1 --block'
    command = [*unshare, "sh", "-c", script, "sh", str(hidden), ray_cli(), cluster.address]
    node = subprocess.Popen(command, start_new_session=True)
    try:
        head = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            joined = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] not in head]
            if joined:
                break
            assert node.poll() is None, "the second node's raylet did not start"
            time.sleep(0.2)
        else:
            pytest.fail("the second node did not join within 90 s")
        yield ray, hidden, joined[0]
    finally:
        ray.shutdown()
        with contextlib.suppress(ProcessLookupError):  # only what this fixture started
            os.killpg(node.pid, signal.SIGTERM)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()
        cluster.shutdown()


def _argv(manifest_root, output):
    return [
        *("--manifest", str(manifest_root / "m.parquet")),
        *("--vocabulary", str(manifest_root / "vocab.txt")),
        *("--output", str(output), "--pretrained", "none"),
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_paths_every_node_sees_pass_and_leave_no_probe_behind(blind_node, tmp_path):
    root = make_dataset(tmp_path, count=3)
    check_shared_storage(open_manifest(str(root / "m.parquet")), str(root / "out"))
    assert list((root / "out").iterdir()) == []  # the probe files and their folder are gone


@pytest.mark.ray
@pytest.mark.slow
def test_an_output_one_node_cannot_see_is_refused_with_exit_2_naming_it(
    blind_node, tmp_path, capsys
):
    _, hidden, node = blind_node
    root = make_dataset(tmp_path, count=3)
    output = hidden / "out"
    backend = RayBackend(factory=BrightnessSegmenter())  # nothing is resolved or started
    assert label_job.main(_argv(root, output), backend=backend) == 2
    err = capsys.readouterr().err
    where = f"{node['NodeManagerHostname']} (node {node['NodeID'][:12]}, "
    assert f"{where}{node['NodeManagerAddress']}): {output}: " in err
    assert "does not see the folder the driver writes" in err
    assert err.count("(node ") == 1  # the head sees it: only the blind node is named
    assert "shared file system mounted at the same path on every node" in err
    assert not (output / "run.json").exists() and not (output / PROBES).exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_manifest_one_node_cannot_see_is_refused_naming_the_file(blind_node, tmp_path):
    _, hidden, node = blind_node
    root = make_dataset(hidden / "data", count=3)
    with pytest.raises(InputError) as refused:
        check_shared_storage(open_manifest(str(root / "m.parquet")), str(tmp_path / "out"))
    message = str(refused.value)
    assert f"(node {node['NodeID'][:12]}, " in message
    assert f"{root / 'm.parquet'}: cannot read its Parquet footer" in message
    assert f"{tmp_path / 'out'}:" not in message  # the output is shared: not named
