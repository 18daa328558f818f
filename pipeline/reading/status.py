"""A run's progress as text (``jobs.status``): the run record, the shards' states as
:func:`pipeline.formats.progress.read_progress` reconciles them, retries, failed shards, and
whether the driver of a run that says ``running`` is still alive (its lease's heartbeat)."""

from __future__ import annotations

from gclip.config import method_spec
from pipeline.formats.ledger import ShardState
from pipeline.formats.progress import Progress, read_progress
from pipeline.formats.run_record import RunRecord, RunState, require_run
from pipeline.formats.storage import Storage
from pipeline.running.lease import read_lease


def describe_status(storage: Storage, tracebacks: bool = False) -> tuple[str, bool]:
    """The status text of the run in ``storage``, and whether it is free of failures.

    Raises:
        InputError: ``storage`` holds no run (or its ``run.json`` is damaged).
    """
    run = require_run(storage)
    progress = read_progress(storage)
    lines = [_headline(storage, run)]
    if run.get("error"):
        lines.append(f"  error: {run['error']}")
        if tracebacks and run.get("traceback"):
            lines.append(run["traceback"])
    states = progress.states()
    totals = progress.totals()
    lines.append(
        f"shards: {states[ShardState.DONE]} done, {states[ShardState.FAILED]} failed, "
        f"{states[ShardState.PENDING]} pending of {len(progress.entries)} planned"
        + (
            f" (+{len(progress.unplanned)} finished, not in the ledger)"
            if progress.unplanned
            else ""
        )
    )
    lines.append(f"images: {totals['images_labelled']} labelled, {totals['images_failed']} failed")
    lines += _by_node(progress)
    retries = progress.retries()
    if retries:
        lines.append(
            "attempts retried: " + ", ".join(f"{n} {k}" for k, n in sorted(retries.items()))
        )
    for path, problem in sorted(progress.damaged.items()):
        lines.append(
            f"  damaged: {storage.uri(path)} ({problem}); counted from the markers, and moved "
            "aside by the next jobs.label run on this output"
        )
    for entry in progress.failed:
        lines.append(
            f"  shard {entry.shard}: failed after {entry.attempts} attempt(s): {entry.error}"
        )
        if tracebacks and entry.traceback:
            lines.append(entry.traceback)
    ok = states[ShardState.FAILED] == 0 and run.state != RunState.FAILED
    return "\n".join(lines), ok


def _by_node(progress: Progress) -> list[str]:
    """Per model worker's node (host and Ray node id): finished shards, labelled images and
    the attempts retried there by cause, when the ledger recorded any node; shards known
    only by their marker come last."""
    by_node, retried = progress.by_node(), progress.retries_by_node()
    if (not by_node or set(by_node) == {""}) and not retried:
        return []
    lines = ["by node (finished shards, labelled images; attempts retried there):"]
    for node in sorted(set(by_node) | set(retried), key=lambda n: (n == "", n)):
        shards, images = by_node.get(node, (0, 0))
        causes = retried.get(node)
        lost = (
            "; retried " + ", ".join(f"{n} {k}" for k, n in sorted(causes.items()))
            if causes
            else ""
        )
        lines.append(
            f"  {node or '(not recorded)'}: {_count(shards, 'shard')}, {images} images{lost}"
        )
    return lines


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _headline(storage: Storage, run: RunRecord) -> str:
    method = run.method
    fuses = method_spec(method["name"]).fuses_global_blocks
    blocks = f" (global blocks {method['global_blocks']})" if fuses else ""
    state = str(run.state)
    if run.state == RunState.RUNNING:
        state += _driver_liveness(storage)
    weights = f", weights {run.weights}" if run.weights else ""
    return f"run {state}: model {run.config['model']}{weights}, method {method['name']}{blocks}"


def _driver_liveness(storage: Storage) -> str:
    """For a run that says ``running``: whether its driver still holds the output's lease."""
    lease = read_lease(storage)
    if lease is None:  # released, or never taken (a run of a version before leases)
        return " (but no driver holds the output: it was stopped before it could say so)"
    return f" ({lease.describe()})"
