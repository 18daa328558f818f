"""Before any model work on a cluster: every node sees the manifest and the output.

A run's workers read the manifest's rows and write their shards' files wherever Ray places
them, so a manifest or an output folder on the driver's own disk works on a one-node cluster
and fails on every other node, late and shard by shard. The driver therefore sends one small
task to each live node that can run work, all at once, before any model actor starts:

1. the driver writes a probe file holding a fresh token, ``OUTPUT/.probe/<token>.driver``;
2. each node reads the footers of (some of) the manifest's files and checks their row counts
   against the driver's, reads the driver's probe file back (a folder of the same name that
   is local to the node holds no such file), then writes ``OUTPUT/.probe/<token>.<node-id>``
   and reads it back;
3. the driver reads each node's file (the node's writes land where the driver reads) and
   deletes every probe file.

A node that cannot do one of these, or does not answer within :data:`PROBE_TIMEOUT_S` (a
hung mount), refuses the run with an :class:`InputError` naming the node, the path and the
fix. Object-store URIs are probed the same way (credentials and endpoints are per node too).
On a one-node cluster nothing is sent. :func:`probe_node` is a plain function (no Ray): what
one node does, as it sees its own file system.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import InputError, describe
from pipeline.formats.layout import PROBES
from pipeline.formats.storage import Storage, resolve
from pipeline.planning.manifest import Manifest, ManifestFile

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 60.0  # a node that has not answered by then is named (a hung mount)
MAX_MANIFEST_PROBES = 8  # manifest files read per node: one per folder, the first ones


@dataclass(frozen=True, slots=True)
class NodeName:
    """A Ray node as a message names it: its host, id and IP (as in the ledger's ``node``)."""

    node_id: str
    host: str
    address: str

    def __str__(self) -> str:
        return f"{self.host} (node {self.node_id[:12]}, {self.address})"


@dataclass(frozen=True, slots=True)
class Unreachable:
    """One path one node could not use: ``problem`` says what went wrong there."""

    node: NodeName
    path: str
    problem: str


def probe_paths(manifest: Manifest) -> tuple[ManifestFile, ...]:
    """The manifest files each node reads: the first of each folder, at most
    :data:`MAX_MANIFEST_PROBES` (a missing mount hides a whole folder, not one file)."""
    chosen: dict[str, ManifestFile] = {}
    for file in manifest.files:
        chosen.setdefault(file.uri.rsplit("/", 1)[0], file)
    return tuple(chosen.values())[:MAX_MANIFEST_PROBES]


def probe_node(
    files: Sequence[ManifestFile], output: str, token: str, node_id: str
) -> list[tuple[str, str]]:
    """What one node makes of the run's storage, as it sees its own file system.

    Args:
        files: manifest files, with the row counts the driver read in their footers.
        output: the output folder (path or URI), as the driver was given it.
        token: the contents of the driver's probe file, ``OUTPUT/.probe/<token>.driver``.
        node_id: this node's Ray id: names the file this node writes.

    Returns:
        ``(path, problem)`` for each path this node could not use (empty: all fine).
    """
    problems = [p for f in files if (p := _manifest_problem(f)) is not None]
    problem = _output_problem(output, token, node_id)
    if problem is not None:
        problems.append((output, problem))
    return problems


def _manifest_problem(file: ManifestFile) -> tuple[str, str] | None:
    try:
        fs, path = resolve(file.uri)
        rows = pq.read_metadata(path, filesystem=fs).num_rows
    except (OSError, ValueError) as err:  # pyarrow raises OSError subclasses and ArrowInvalid
        return file.uri, f"cannot read its Parquet footer ({describe(err)})"
    if rows != file.rows:
        return file.uri, f"holds {rows} rows here, {file.rows} on the driver: not the same file"
    return None


def _output_problem(output: str, token: str, node_id: str) -> str | None:
    try:
        storage = Storage(output, create=False)
        if not storage.exists(driver_probe(token)):
            # Write nothing then: a node-local folder of the same name would be created.
            return (
                f"the driver's probe file {storage.uri(driver_probe(token))} is not there: "
                "this node does not see the folder the driver writes"
            )
        if storage.read(driver_probe(token)).decode() != token:
            return "the driver's probe file holds something else here: not the same folder"
        mine = node_probe(token, node_id)
        storage.write_atomic(mine, node_id.encode())
        if storage.read(mine).decode() != node_id:
            return f"{storage.uri(mine)} read back differs from what this node wrote"
    except (OSError, ValueError) as err:
        return f"cannot be written and read back ({describe(err)})"
    return None


def driver_probe(token: str) -> str:
    return f"{PROBES}/{token}.driver"


def node_probe(token: str, node_id: str) -> str:
    return f"{PROBES}/{token}.{node_id}"


def refusal(unreachable: Sequence[Unreachable]) -> InputError:
    """The error that refuses a run some nodes cannot serve: each node, path and problem,
    then the fix."""
    nodes = sorted({u.node.node_id for u in unreachable})
    lines = [
        f"{len(nodes)} node(s) of the Ray cluster cannot reach the run's files; every node "
        "that runs workers must read the manifest (and its images) and write the output:"
    ]
    lines += [f"  {u.node}: {u.path}: {u.problem}" for u in unreachable]
    lines.append(
        "Put the manifest, its images and the output on a shared file system mounted at the "
        "same path on every node (NFS, EFS, Lustre...), or use object-store URIs (s3://, "
        "gs://) that every node can reach with its credentials."
    )
    return InputError("\n".join(lines))


def check_shared_storage(
    manifest: Manifest, output: str, timeout_s: float = PROBE_TIMEOUT_S
) -> None:
    """Refuse a run whose manifest or output some live node of the cluster cannot reach.

    Ray must be connected. Nothing is sent on a one-node cluster; otherwise one task per
    node that holds CPUs or GPUs, all in parallel (see the module docstring).

    Raises:
        InputError: naming each node (host, Ray id, IP), the path it could not use, and the
            fix (a shared file system at the same path everywhere, or s3://).
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) < 2:
        return
    workers = [n for n in alive if _can_run_work(n)]
    names = [
        NodeName(n["NodeID"], n.get("NodeManagerHostname", "?"), n.get("NodeManagerAddress", "?"))
        for n in workers
    ]
    storage = Storage(output)
    token = uuid.uuid4().hex
    log.info("checking that the %d nodes see the manifest and %s", len(names), output)
    storage.write_atomic(driver_probe(token), token.encode())
    try:
        answers = _ask_nodes(ray, names, probe_paths(manifest), output, token, timeout_s)
        unreachable = [u for name in names for u in _verdict(storage, name, answers, token)]
    finally:
        _clean_up(storage, token, names)
    if unreachable:
        raise refusal(unreachable)


def _can_run_work(node: dict[str, Any]) -> bool:
    resources = node.get("Resources", {})
    return bool(resources.get("CPU", 0) > 0 or resources.get("GPU", 0) > 0)


def _ask_nodes(
    ray: Any,
    names: Sequence[NodeName],
    files: tuple[ManifestFile, ...],
    output: str,
    token: str,
    timeout_s: float,
) -> dict[str, list[tuple[str, str]] | None]:
    """Each node's problems (``None``: the node was lost meanwhile, nothing to say), a probe
    that failed or did not answer in time counting as a problem."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # max_calls=1: the probe's worker process exits after it, leaving the node as it found
    # it (a warm idle worker would start one node's model actor sooner than the others').
    task = ray.remote(max_calls=1)(probe_node)
    refs = {
        name.node_id: task.options(
            num_cpus=0,  # runs beside whatever holds the node's CPUs
            max_retries=0,
            scheduling_strategy=NodeAffinitySchedulingStrategy(name.node_id, soft=False),
        ).remote(files, output, token, name.node_id)
        for name in names
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    answered = {r.hex() for r in ready}
    answers: dict[str, list[tuple[str, str]] | None] = {}
    for node_id, ref in refs.items():
        if ref.hex() not in answered:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
            late = f"the probe did not answer within {timeout_s:.0f} s (a hung mount?)"
            answers[node_id] = [(output, late)]
            continue
        try:
            answers[node_id] = ray.get(ref)
        except (ray.exceptions.NodeDiedError, ray.exceptions.TaskUnschedulableError):
            log.warning("node %s was lost during the storage check; skipped", node_id[:12])
            answers[node_id] = None
        except ray.exceptions.RayError as err:
            answers[node_id] = [(output, f"the probe task failed ({describe(err)})")]
    return answers


def _verdict(
    storage: Storage,
    name: NodeName,
    answers: dict[str, list[tuple[str, str]] | None],
    token: str,
) -> list[Unreachable]:
    """The node's own problems; if it had none, whether its write reached the driver's
    output (a node could write into a folder of its own that happens to be readable)."""
    answer = answers.get(name.node_id)
    if answer is None:
        return []
    if answer:
        return [Unreachable(name, path, problem) for path, problem in answer]
    mine = node_probe(token, name.node_id)
    try:
        seen = storage.read(mine).decode()
    except OSError as err:
        seen = describe(err)
    if seen != name.node_id:
        problem = f"the node's probe file {storage.uri(mine)} did not reach the driver ({seen})"
        return [Unreachable(name, storage.root, problem)]
    return []


def _clean_up(storage: Storage, token: str, names: Sequence[NodeName]) -> None:
    for relative in [driver_probe(token), *(node_probe(token, n.node_id) for n in names)]:
        with contextlib.suppress(OSError):
            storage.delete(relative)
    fs, path = resolve(storage.uri(PROBES))
    if isinstance(fs, pafs.LocalFileSystem):  # an empty folder left behind, if nothing else
        with contextlib.suppress(OSError):
            os.rmdir(path)
