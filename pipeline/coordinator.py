"""The coordinator: plan, resume, dispatch with backpressure, retry, and finish a run.

Numbered steps of :func:`run_labelling`:
1. Validate the vocabulary and the manifest, plan shards, check the fingerprint against an
   earlier run in the same output (refuse a changed setting unless told otherwise).
2. Reconcile the ledger with the shard files: finished shards are skipped, never rewritten.
3. Dispatch the remaining shards, at most ``executor.capacity`` in flight; a shard whose worker
   died is retried up to ``max_attempts``; one whose code raised fails with its traceback.
4. Assemble the outputs from every finished shard and write ``run.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from tqdm import tqdm

import gclip
from pipeline.config import RunConfig
from pipeline.executors import Executor, Outcome
from pipeline.ledger import DONE, FAILED, Ledger, ShardEntry
from pipeline.manifest import Shard, plan_shards, read_manifest
from pipeline.outputs import assemble, read_run, read_shard, write_run
from pipeline.storage import Storage
from pipeline.worker import ShardSettings, shard_path

log = logging.getLogger(__name__)

ExecutorFactory = Callable[[RunConfig, ShardSettings], Executor]


class ConfigChangedError(RuntimeError):
    """The output folder holds a run with other labelling settings."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a finished (or failed) run reports; the job's exit code follows ``ok``."""

    shards: int
    shards_failed: int
    images_labelled: int
    images_failed: int
    seconds: float
    failures_by_error: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.shards_failed == 0


def run_labelling(
    config: RunConfig, make_executor: ExecutorFactory, allow_config_change: bool = False
) -> RunSummary:
    """Label the manifest's images into ``config.output``; see the module docstring."""
    started = time.time()
    # 1. Validate and plan before any work.
    vocabulary = gclip.load_vocabulary(
        config.vocabulary, config.background_first_line, config.threshold
    )
    shards = plan_shards(read_manifest(config.manifest), config.shard_size)
    fingerprint = config.labelling_fingerprint(vocabulary.fingerprint)
    storage = Storage(config.output)
    _check_fingerprint(storage, fingerprint, allow_config_change)
    run_record = _run_record(config, fingerprint, vocabulary, started, state="running")
    write_run(storage, run_record)

    # 2. Reconcile the ledger with what is on storage.
    ledger = Ledger(storage)
    entries = _reconcile(storage, ledger, shards)
    todo = [s for s in shards if entries[s.index].state != DONE]
    log.info(
        "%d shards planned, %d already done, %d to run",
        len(shards),
        len(shards) - len(todo),
        len(todo),
    )

    # 3. Dispatch.
    if todo:
        settings = ShardSettings(
            vocabulary=vocabulary,
            inference=config.inference_config(),
            fingerprint=fingerprint,
            images_per_call=config.images_per_call,
            decode_threads=config.decode_threads,
            png_labels=config.png_labels,
        )
        executor = make_executor(config, settings)
        try:
            _dispatch(executor, todo, entries, ledger, config.max_attempts)
        finally:
            executor.shutdown()

    # 4. Assemble outputs from every finished shard.
    return _finish(storage, config, fingerprint, vocabulary, entries, started)


def _finish(
    storage: Storage,
    config: RunConfig,
    fingerprint: str,
    vocabulary: gclip.Vocabulary,
    entries: dict[int, ShardEntry],
    started: float,
) -> RunSummary:
    """Write the run's outputs from the finished shards, then run.json; summarise."""
    done = [i for i, e in entries.items() if e.state == DONE]
    counts = assemble(storage, done, vocabulary, _coco_info(config, fingerprint, vocabulary))
    failed = sum(1 for e in entries.values() if e.state == FAILED)
    seconds = time.time() - started
    run_record = _run_record(
        config, fingerprint, vocabulary, started, "finished" if failed == 0 else "failed"
    )
    run_record["counts"] = {
        "shards": len(entries),
        "shards_done": len(done),
        "shards_failed": failed,
        **counts,
    }
    run_record["timings"].update(finished=_now(), seconds=round(seconds, 3))
    write_run(storage, run_record)
    return RunSummary(
        shards=len(entries),
        shards_failed=failed,
        images_labelled=counts["images_labelled"],
        images_failed=counts["images_failed"],
        seconds=seconds,
        failures_by_error=counts["failures_by_error"],
    )


def _check_fingerprint(storage: Storage, fingerprint: str, allow_change: bool) -> None:
    previous = read_run(storage)
    if previous is None or previous["fingerprint"] == fingerprint:
        return
    if not allow_change:
        raise ConfigChangedError(
            f"{storage.root} holds a run with other labelling settings (model, method, vocabulary or "
            "inference). Use a new --output, or pass --allow-config-change to keep its finished "
            "shards and label the rest with the new settings."
        )
    log.warning("settings changed since the last run in %s; continuing as asked", storage.root)


def _reconcile(storage: Storage, ledger: Ledger, shards: list[Shard]) -> dict[int, ShardEntry]:
    """Ledger entries per shard; a shard file without a ``done`` entry (a crash between the two
    writes) is adopted, and a ``done`` entry without its file is reset."""
    known = ledger.read_all()
    finished = set(storage.list("shards"))  # one listing, not a request per shard
    entries: dict[int, ShardEntry] = {}
    for shard in shards:
        entry = known.get(shard.index, ShardEntry(shard.index))
        has_file = shard_path(shard.index) in finished
        if has_file and entry.state != DONE:
            data = read_shard(storage, shard.index)
            entry = ledger.write(
                replace(
                    entry,
                    state=DONE,
                    images_done=len(data["images"]),
                    images_failed=len(data["failures"]),
                )
            )
        elif not has_file and entry.state == DONE:
            entry = ledger.write(replace(entry, state="pending"))
        elif entry.state == FAILED:  # a new run gives failed shards a new chance
            entry = replace(entry, state="pending", attempts=0)
        entries[shard.index] = entry
    return entries


def _dispatch(
    executor: Executor,
    todo: list[Shard],
    entries: dict[int, ShardEntry],
    ledger: Ledger,
    max_attempts: int,
) -> None:
    by_index = {s.index: s for s in todo}
    queue = list(todo)
    in_flight = 0
    total = sum(len(s.records) for s in todo)
    failures = 0
    with tqdm(total=total, unit="img", desc="labelling", dynamic_ncols=True) as bar:
        while queue or in_flight:
            while queue and in_flight < executor.capacity:
                shard = queue.pop(0)
                entries[shard.index] = replace(
                    entries[shard.index], attempts=entries[shard.index].attempts + 1
                )
                executor.submit(shard)
                in_flight += 1
            for outcome in executor.wait():
                in_flight -= 1
                entry = _record(outcome, entries[outcome.shard], ledger, max_attempts)
                entries[outcome.shard] = entry
                if entry.state == DONE:
                    failures += entry.images_failed
                    bar.update(entry.images_done + entry.images_failed)
                    bar.set_postfix(failed_images=failures, refresh=False)
                elif entry.state != FAILED:
                    queue.append(by_index[outcome.shard])
                else:
                    bar.update(len(by_index[outcome.shard].records))


def _record(outcome: Outcome, entry: ShardEntry, ledger: Ledger, max_attempts: int) -> ShardEntry:
    if outcome.result is not None:
        r = outcome.result
        return ledger.write(
            replace(
                entry,
                state=DONE,
                images_done=r.images_done,
                images_failed=r.images_failed,
                seconds=r.seconds,
                error=None,
                traceback=None,
            )
        )
    if outcome.died is not None and entry.attempts < max_attempts:
        log.warning(
            "worker died on shard %d (attempt %d/%d): %s; retrying",
            entry.shard,
            entry.attempts,
            max_attempts,
            outcome.died,
        )
        return ledger.write(replace(entry, state="pending", error=outcome.died))
    message = outcome.error or f"worker died {entry.attempts} times; last: {outcome.died}"
    log.error("shard %d failed: %s", entry.shard, message)
    return ledger.write(replace(entry, state=FAILED, error=message, traceback=outcome.traceback))


def _coco_info(config: RunConfig, fingerprint: str, vocabulary: gclip.Vocabulary) -> dict[str, Any]:
    return {
        "description": "gclip-label pseudo-labels",
        "version": "0.1.0",
        "model": config.model,
        "pretrained": config.pretrained,
        "method": config.method,
        "method_options": config.method_options,
        "vocabulary_sha256": vocabulary.fingerprint,
        "thresholds": {
            c.name: t for c, t in zip(vocabulary.classes, vocabulary.thresholds, strict=True)
        },
        "inference": config.inference,
        "fingerprint": fingerprint,
    }


def _run_record(
    config: RunConfig, fingerprint: str, vocabulary: gclip.Vocabulary, started: float, state: str
) -> dict[str, Any]:
    return {
        "state": state,
        "config": config.to_json(),
        "fingerprint": fingerprint,
        "vocabulary": vocabulary.to_json(),
        "counts": {},
        "timings": {"started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")},
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
