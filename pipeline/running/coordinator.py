"""The coordinator: validate, resolve, resume, dispatch with backpressure, retry, finish.

Numbered steps of a run:
1. :func:`prepare_run`, on the driver without Ray or torch: the weights source, the vocabulary
   and the manifest are checked and the shards planned; any problem is an :class:`InputError`.
2. :func:`execute` resolves the segmenter recipe once on the model (its depth's defaults,
   GCLIP's calibration), fingerprints the resolved settings and refuses an output folder that
   holds a run with other ones (unless told otherwise).
3. The ledger is reconciled with the shard files: finished shards are skipped, never rewritten
   (``retry_failed`` relabels the failed images of finished shards, replacing their files).
4. Shards are dispatched, at most ``executor.capacity`` in flight; a lost worker, an
   out-of-memory error or a missed deadline is retried up to ``max_attempts``; an error of our
   code fails the shard with its traceback; a worker that cannot build its model ends the run.
5. The outputs are assembled from every finished shard and ``run.json`` says how it ended; a
   crash at any step after 2 leaves ``run.json`` ``failed`` with the error.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import gclip
from gclip.catalog import check_source, is_remote
from gclip.config import to_json
from pipeline.config import RunConfig, labelling_fingerprint
from pipeline.errors import ConfigChangedError, InputError, SetupError, plain
from pipeline.formats.layout import FORMAT_VERSION, SHARDS, shard_path
from pipeline.formats.outputs import assemble, read_run, read_shard, write_run
from pipeline.formats.storage import Storage, resolve
from pipeline.planning.manifest import Shard, first_uris, plan_shards, read_manifest
from pipeline.running.backends import Backend
from pipeline.running.dispatch import dispatch
from pipeline.running.ledger import DONE, FAILED, PENDING, Ledger, ShardEntry
from pipeline.running.recipe import Resolution, SegmenterSpec
from pipeline.running.worker import ShardSettings

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 8


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a finished (or failed) run reports; the job's exit code follows ``ok``.

    Attributes:
        retries: attempts retried in this run, by cause (``died``, ``oom``, ``timeout``).
    """

    shards: int
    shards_failed: int
    images_labelled: int
    images_failed: int
    seconds: float
    failures_by_error: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.shards_failed == 0


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A validated, planned run: everything known before Ray or the model."""

    config: RunConfig
    vocabulary: gclip.Vocabulary
    shards: list[Shard]
    calibration_uris: tuple[str, ...]


def run_labelling(
    config: RunConfig,
    backend: Backend,
    allow_config_change: bool = False,
    retry_failed: bool = False,
) -> RunSummary:
    """Label the manifest's images into ``config.output``; see the module docstring."""
    return execute(prepare_run(config), backend, allow_config_change, retry_failed)


def prepare_run(config: RunConfig) -> PreparedRun:
    """Step 1: check the weights source, vocabulary and manifest, and plan the shards.

    Raises:
        InputError: naming the problem; nothing has started.
    """
    try:
        check_source(config.model, config.pretrained)
        if config.pretrained is not None and is_remote(config.pretrained):
            fs, path = resolve(config.pretrained)
            if not fs.get_file_info(path).is_file:
                raise InputError(f"Checkpoint {config.pretrained} does not exist.")
        vocabulary = gclip.load_vocabulary(
            config.vocabulary, config.background_first_line, config.threshold
        )
        shards = plan_shards(read_manifest(config.manifest), config.shard_size)
        uris: tuple[str, ...] = ()
        if config.method.needs_calibration:
            # Every worker and every resumed run fuse the same blocks: they come from the
            # manifest's first images, not from whichever shard a worker saw first.
            uris = tuple(first_uris(config.manifest, CALIBRATION_IMAGES))
    except InputError:
        raise
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from err
    return PreparedRun(config, vocabulary, shards, uris)


def execute(
    run: PreparedRun,
    backend: Backend,
    allow_config_change: bool = False,
    retry_failed: bool = False,
) -> RunSummary:
    """Steps 2-5 of a prepared run on ``backend`` (closed at the end)."""
    started = time.time()
    config = run.config
    storage = Storage(config.output)
    try:
        previous = read_run(storage)
        _check_format(storage, previous)
        try:
            resolution = backend.resolve(
                SegmenterSpec(config.model, config.pretrained, config.method, config.device),
                run.calibration_uris,
                config.inference.crop,
            )
        except SetupError as err:
            if previous is None:  # a first run leaves its failure where status looks
                write_run(storage, _run_record(run, None, None, started, "failed", err))
            raise
        weights = resolution.model.get("weights_sha256") or _seed(resolution)
        fingerprint = labelling_fingerprint(
            config, resolution.spec.method, weights, run.vocabulary.fingerprint
        )
        _check_fingerprint(storage, previous, fingerprint, allow_config_change)
        write_run(storage, _run_record(run, resolution, fingerprint, started, "running"))
        try:
            counts, retries = _label(run, backend, storage, resolution, fingerprint, retry_failed)
        except BaseException as err:
            state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            write_run(storage, _run_record(run, resolution, fingerprint, started, state, err))
            raise
        seconds = time.time() - started
        state = "finished" if counts["shards_failed"] == 0 else "failed"
        record = _run_record(run, resolution, fingerprint, started, state)
        record["counts"] = counts
        record["timings"].update(finished=_now(), seconds=round(seconds, 3))
        write_run(storage, record)
        return RunSummary(
            shards=counts["shards"],
            shards_failed=counts["shards_failed"],
            images_labelled=counts["images_labelled"],
            images_failed=counts["images_failed"],
            seconds=seconds,
            failures_by_error=counts["failures_by_error"],
            retries=retries,
        )
    finally:
        backend.close()


def _label(
    run: PreparedRun,
    backend: Backend,
    storage: Storage,
    resolution: Resolution,
    fingerprint: str,
    retry_failed: bool,
) -> tuple[dict[str, Any], dict[str, int]]:
    """Steps 3-5: reconcile, dispatch, assemble; return the counts and the retries by cause."""
    config = run.config
    ledger = Ledger(storage)
    entries = _reconcile(storage, ledger, run.shards)
    retried = {
        i for i, e in entries.items() if retry_failed and e.state == DONE and e.images_failed
    }
    for index in retried:
        entries[index] = replace(entries[index], attempts=0)
    todo = [s for s in run.shards if entries[s.index].state != DONE or s.index in retried]
    log.info(
        "%d shards planned, %d already done, %d to run (%d to relabel failed images)",
        len(run.shards),
        len(run.shards) - len(todo) + len(retried),
        len(todo) - len(retried),
        len(retried),
    )
    retries: Counter[str] = Counter()
    if todo:
        settings = ShardSettings(
            vocabulary=run.vocabulary,
            inference=config.inference,
            fingerprint=fingerprint,
            images_per_call=config.images_per_call,
            decode_threads=config.decode_threads,
            png_labels=config.png_labels,
        )
        executor = backend.executor(config, resolution.spec, settings)
        try:
            retries = dispatch(executor, todo, entries, ledger, config.max_attempts, retried)
        finally:
            executor.shutdown()
    done = [i for i, e in entries.items() if e.state == DONE]
    info = _coco_info(config, run.vocabulary, resolution, fingerprint)
    counts = assemble(storage, done, run.vocabulary, info)
    failed = sum(1 for e in entries.values() if e.state == FAILED)
    counts.update(shards=len(entries), shards_done=len(done), shards_failed=failed)
    counts["retries"] = dict(retries)
    return counts, dict(retries)


def _check_format(storage: Storage, previous: dict[str, Any] | None) -> None:
    if previous is None or previous.get("format_version") == FORMAT_VERSION:
        return
    found = previous.get("format_version", 1)  # runs before versioning wrote format 1
    age = "an older" if found < FORMAT_VERSION else "a newer"
    raise ConfigChangedError(
        f"{storage.root} was written by {age} gclip-label (output format {found}; this "
        f"version writes format {FORMAT_VERSION}). Its shards cannot be mixed with new ones: "
        "label into a new --output."
    )


def _check_fingerprint(
    storage: Storage, previous: dict[str, Any] | None, fingerprint: str, allow_change: bool
) -> None:
    if previous is None or previous.get("fingerprint") in (None, fingerprint):
        return
    if not allow_change:
        raise ConfigChangedError(
            f"{storage.root} holds a run with other labelling settings (model, weights, method, "
            "vocabulary or inference). Use a new --output, or pass --allow-config-change to keep "
            "its finished shards and label the rest with the new settings."
        )
    log.warning("settings changed since the last run in %s; continuing as asked", storage.root)


def _reconcile(storage: Storage, ledger: Ledger, shards: list[Shard]) -> dict[int, ShardEntry]:
    """Ledger entries per shard; a shard file without a ``done`` entry (a crash between the two
    writes) is adopted, and a ``done`` entry without its file is reset."""
    known = ledger.read_all()
    finished = set(storage.list(SHARDS))  # one listing, not a request per shard
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
            entry = ledger.write(replace(entry, state=PENDING))
        elif entry.state == FAILED:  # a new run gives failed shards a new chance
            entry = replace(entry, state=PENDING, attempts=0)
        entries[shard.index] = entry
    return entries


def _seed(resolution: Resolution) -> str | None:
    seed = resolution.model.get("random_seed")
    return None if seed is None else f"random-seed:{seed}"


def _coco_info(
    config: RunConfig, vocabulary: gclip.Vocabulary, resolution: Resolution, fingerprint: str
) -> dict[str, Any]:
    return {
        "description": "gclip-label pseudo-labels",
        "version": "0.1.0",
        "format_version": FORMAT_VERSION,
        "model": config.model,
        "pretrained": config.pretrained,
        "weights_sha256": resolution.model.get("weights_sha256"),
        "method": config.method.name,
        "method_options": to_json(resolution.spec.method),
        "inference": to_json(config.inference),
        "vocabulary_sha256": vocabulary.fingerprint,
        "thresholds": {
            c.name: t for c, t in zip(vocabulary.classes, vocabulary.thresholds, strict=True)
        },
        "fingerprint": fingerprint,
    }


def _run_record(
    run: PreparedRun,
    resolution: Resolution | None,
    fingerprint: str | None,
    started: float,
    state: str,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """``run.json``: the config as given and as resolved, with where each setting came from."""
    record: dict[str, Any] = {
        "state": state,
        "format_version": FORMAT_VERSION,
        "config": run.config.to_json(),
        "settings_sources": dict(run.config.sources),
        "fingerprint": fingerprint,
        "vocabulary": run.vocabulary.to_json(),
        "counts": {},
        "timings": {"started": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds")},
    }
    if resolution is not None:
        record["resolved"] = {
            "method": to_json(resolution.spec.method),
            "model": resolution.model,
            "sources": resolution.sources,
        }
    if error is not None:
        record["error"] = (
            error.cause if isinstance(error, SetupError) else f"{type(error).__name__}: {error}"
        )
        trace = error.traceback if isinstance(error, SetupError) else traceback.format_exc()
        record["traceback"] = plain(trace) if trace else None
    return record


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
