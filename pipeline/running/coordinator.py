"""The coordinator: validate and plan, resolve, resume, dispatch, finish.

Numbered steps of a run:
1. :func:`prepare_run`, on the driver without Ray (:mod:`pipeline.running.checks` first: the
   weights can be had, the method fits the model, the device exists, the output can be
   written); the vocabulary and the manifest (footers, then one streaming pass over its ids)
   are read and the shards planned against the previous plan in the output folder; the ledger
   is reconciled with the shards' markers; settings that differ from the previous run's are
   refused, named. Any problem is an :class:`InputError`. ``--dry-run`` stops here, and so
   does a run with nothing left to do.
2. :func:`execute` takes the output's lease (no second driver writes there meanwhile),
   resolves the segmenter recipe once on the model (its depth's defaults, GCLIP's
   calibration), fingerprints the resolved settings and refuses an output folder that holds a
   run with other ones (unless told otherwise), then writes the plan to the ledger.
3. Shards are dispatched (:func:`pipeline.running.dispatch.dispatch`); finished shards are
   never redone or rewritten (``retry_failed`` relabels the failed images of finished shards,
   replacing their files).
4. ``run.json`` is written from the ledger's counts, and a run small enough to be useful as one
   file gets ``annotations.json`` merged from its shards. A crash at any step after 2 leaves
   ``run.json`` ``failed`` (or ``interrupted``) with the error, where the disk allows.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any

import gclip
from pipeline.config import RunConfig, labelling_fingerprint
from pipeline.errors import ConfigChangedError, DamagedFileError, InputError, SetupError
from pipeline.formats.coco import categories
from pipeline.formats.layout import ANNOTATIONS, FAILURES, shard_path
from pipeline.formats.ledger import Ledger, ShardState
from pipeline.formats.outputs import merge
from pipeline.formats.progress import totals
from pipeline.formats.run_record import RunRecord, RunState, read_run, write_run
from pipeline.formats.shard_files import ShardContext
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest, first_uris, open_manifest
from pipeline.planning.plan import Plan
from pipeline.running import checks
from pipeline.running.backends import Backend
from pipeline.running.dispatch import dispatch
from pipeline.running.lease import Lease, LeaseLostError, Owner, acquire
from pipeline.running.recipe import Resolution, SegmenterSpec
from pipeline.running.records import coco_info, now, run_record
from pipeline.running.resume import PlannedEntries, plan_with_previous
from pipeline.running.stages import ShardSettings
from pipeline.running.stop import StopRequest

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 8


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a finished (or failed) run reports; the job's exit code follows ``ok``.

    Attributes:
        retries: attempts retried in this run, by cause (``died``, ``oom``, ``timeout``).
        merged: ``annotations.json`` was written (the run was within ``merge_limit``).
        complete_before: the run had nothing left to do (no model was started).
    """

    shards: int
    shards_failed: int
    images_labelled: int
    images_failed: int
    seconds: float
    failures_by_error: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    merged: bool = False
    complete_before: bool = False

    @property
    def every_image_failed(self) -> bool:
        return self.images_labelled == 0 and self.images_failed > 0

    @property
    def ok(self) -> bool:
        return self.shards_failed == 0 and not self.every_image_failed


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A validated, planned run: everything known before Ray or the model.

    Attributes:
        entries: the ledger's entry per planned shard, reconciled with the shards' markers
            (objects only for the shards the ledger or a marker knows).
        previous: the output folder's ``run.json``, if it has one.
        weights: where the weights come from, as checked (for ``--dry-run``).
    """

    config: RunConfig
    vocabulary: gclip.Vocabulary
    manifest: Manifest
    plan: Plan
    entries: PlannedEntries
    previous: RunRecord | None
    calibration_uris: tuple[str, ...]
    weights: str = ""

    @property
    def done(self) -> int:
        return len(self.entries.done())

    def complete(self, retry_failed: bool = False) -> bool:
        """Nothing is left to do: every shard is done, a previous run with these settings
        finished, and no failed image is to be relabelled."""
        if self.previous is None or self.previous.state != RunState.FINISHED:
            return False
        if retry_failed and any(e.images_failed for e in self.entries.known.values()):
            return False
        return self.done == len(self.entries) and not checks.differences(
            self.previous, self.config, self.vocabulary
        )


def run_labelling(
    config: RunConfig,
    backend: Backend,
    allow_config_change: bool = False,
    retry_failed: bool = False,
) -> RunSummary:
    """Label the manifest's images into ``config.output``; see the module docstring."""
    return execute(
        prepare_run(config, allow_config_change), backend, allow_config_change, retry_failed
    )


def prepare_run(config: RunConfig, allow_config_change: bool = False) -> PreparedRun:
    """Step 1: check the weights, method, device, output, vocabulary and manifest; plan.

    Raises:
        InputError: naming the problem; nothing has started and nothing was written but for
            damaged ledger files or markers moved aside.
    """
    labelling = config.labelling
    try:
        checks.check_output(config.output)
        checks.check_paths_under_ray_job(config)
        vocabulary = gclip.load_vocabulary(
            config.vocabulary, labelling.background_first_line, labelling.threshold
        )
        storage = Storage(config.output, create=False)
        previous = read_run(storage)
        checks.check_format(storage, previous)
        if not allow_config_change:
            checks.check_settings(storage, previous, config, vocabulary)
        manifest = open_manifest(config.manifest)
        weights = checks.check_model(config)  # may wait for the hub: after the local checks
        plan, entries = plan_with_previous(
            storage, manifest, config.execution.shard_size, labelling.png_labels
        )
        uris: tuple[str, ...] = ()
        if labelling.method.needs_calibration:
            # Every worker and every resumed run fuse the same blocks: they come from the
            # manifest's first images, not from whichever shard a worker saw first.
            uris = tuple(first_uris(manifest, CALIBRATION_IMAGES))
    except InputError:
        raise
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from err
    return PreparedRun(config, vocabulary, manifest, plan, entries, previous, uris, weights)


@dataclass(frozen=True, slots=True)
class _Session:
    """One execution of a prepared run: where it writes, its lease, and what it was told."""

    storage: Storage
    lease: Lease
    started: float
    allow_config_change: bool
    retry_failed: bool
    stop: StopRequest | None


def execute(
    run: PreparedRun,
    backend: Backend,
    allow_config_change: bool = False,
    retry_failed: bool = False,
    stop: StopRequest | None = None,
) -> RunSummary:
    """Steps 2-4 of a prepared run on ``backend`` (closed at the end); ``stop``, once
    requested (by a signal), winds the run down (:mod:`pipeline.running.stop`)."""
    started = time.time()
    config = run.config
    if run.complete(retry_failed):
        return _complete(run, started)
    storage = Storage(config.output)
    try:
        with acquire(storage, Owner.here()) as lease:
            session = _Session(storage, lease, started, allow_config_change, retry_failed, stop)
            return _execute(run, backend, session)
    finally:
        backend.close()


def _execute(run: PreparedRun, backend: Backend, session: _Session) -> RunSummary:
    storage, started = session.storage, session.started
    config, vocabulary = run.config, run.vocabulary
    backend.check_storage(run.manifest, config.output)  # every node sees them: else exit 2
    try:
        resolution = backend.resolve(
            SegmenterSpec(
                config.labelling.model,
                config.labelling.pretrained,
                config.labelling.method,
                config.execution.device,
            ),
            run.calibration_uris,
            config.labelling.inference.crop,
        )
    except SetupError as err:
        if run.previous is None:  # a first run leaves its failure where status looks
            _record(
                storage, run_record(config, vocabulary, None, None, started, RunState.FAILED, err)
            )
        raise
    weights = resolution.model.get("weights_sha256") or _seed(resolution)
    fingerprint = labelling_fingerprint(
        config.labelling, resolution.spec.method, weights, vocabulary.fingerprint
    )
    _check_fingerprint(storage, run.previous, fingerprint, session.allow_config_change)
    _record(
        storage, run_record(config, vocabulary, resolution, fingerprint, started, RunState.RUNNING)
    )
    try:
        result, retries = _label(run, backend, session, resolution, fingerprint)
    except LeaseLostError:
        raise  # another driver owns the output now: its run.json is not ours to write
    except BaseException as err:
        state = RunState.INTERRUPTED if isinstance(err, KeyboardInterrupt) else RunState.FAILED
        record = run_record(config, vocabulary, resolution, fingerprint, started, state, err)
        _record(storage, record)
        raise
    seconds = time.time() - started
    state = RunState.FINISHED if result["shards_failed"] == 0 else RunState.FAILED
    record = run_record(config, vocabulary, resolution, fingerprint, started, state)
    record["counts"] = result
    record["timings"].update(finished=now(), seconds=round(seconds, 3))
    session.lease.verify()
    _record(storage, record)
    return _summary(result, seconds, retries)


def _complete(run: PreparedRun, started: float) -> RunSummary:
    """A run with nothing left to do: its previous counts, and no model started."""
    counts = totals(run.entries)
    log.info("%s: every shard is done with these settings; nothing to do", run.config.output)
    summary = _summary(counts, time.time() - started, {})
    merged = bool(run.previous and run.previous.get("counts", {}).get("merged"))
    return replace(summary, merged=merged, complete_before=True)


def _summary(counts: dict[str, Any], seconds: float, retries: dict[str, int]) -> RunSummary:
    return RunSummary(
        shards=counts["shards"],
        shards_failed=counts["shards_failed"],
        images_labelled=counts["images_labelled"],
        images_failed=counts["images_failed"],
        seconds=seconds,
        failures_by_error=counts["failures_by_error"],
        retries=retries,
        merged=counts.get("merged", False),
    )


def _record(storage: Storage, record: dict[str, Any]) -> None:
    """Write ``run.json``; a full or failing disk is logged, not raised over the run's own
    error (the shards' markers still hold the run's progress)."""
    try:
        write_run(storage, record)
    except OSError as err:
        log.error(
            "could not record the run's state %r in %s: %s",
            record["state"],
            storage.uri("run.json"),
            err,
        )
        if record["state"] == RunState.RUNNING:
            raise


def _label(
    run: PreparedRun,
    backend: Backend,
    session: _Session,
    resolution: Resolution,
    fingerprint: str,
) -> tuple[dict[str, Any], dict[str, int]]:
    """Steps 3-4: persist the plan, dispatch, merge; return the counts and retries by cause."""
    config, storage, retry_failed = run.config, session.storage, session.retry_failed
    labelling, execution = config.labelling, config.execution
    retried = {
        i
        for i, e in run.entries.known.items()
        if retry_failed and e.state == ShardState.DONE and e.images_failed
    }
    # every planned shard's entry, the ledger's to hold: the plan's columns and the known ones
    entries = PlannedEntries(run.entries.shards, dict(run.entries.known))
    for index in retried:
        entries[index] = replace(entries[index], attempts=0)
    ledger = Ledger(storage, guard=session.lease.verify)
    ledger.compact(entries)  # the plan, durable before any shard runs
    del entries
    todo = run.entries.to_run(retried)  # columns, each Shard made as dispatch reads it
    log.info(
        "%d shards planned (%d kept from the previous plan), %d done, %d to run, %d to relabel "
        "failed images",
        len(run.plan.shards),
        run.plan.kept,
        run.done,
        len(todo) - len(retried),
        len(retried),
    )
    info = coco_info(config, run.vocabulary, resolution, fingerprint)
    retries: dict[str, int] = {}
    if todo:
        settings = ShardSettings(
            context=ShardContext(
                fingerprint, info, run.vocabulary, run.manifest.id_kind, labelling.embedding_format
            ),
            inference=labelling.inference,
            images_per_call=execution.images_per_call,
            decode_threads=execution.decode_threads,
            png_labels=labelling.png_labels,
            min_instance_area=labelling.min_instance_area,
            max_image_pixels=labelling.max_image_pixels,
        )
        executor = backend.executor(config, resolution.spec, settings)
        try:
            retries = dispatch(
                executor,
                todo,
                ledger,
                execution.max_attempts,
                retried,
                session.stop,
                execution.stop_timeout_s,
            )
        finally:
            executor.shutdown()
            ledger.flush()
    ledger.compact()
    result = totals(ledger.entries)
    result["retries"] = retries
    result["merged"] = (
        execution.merge_limit > 0 and result["images_labelled"] <= execution.merge_limit
    )
    if result["merged"]:
        done = ledger.entries.done()
        _merge(storage, ledger, done, info, run.vocabulary)
    else:  # a merged file of an earlier, smaller run would be stale
        storage.delete(ANNOTATIONS)
        storage.delete(FAILURES)
    return result, retries


def _merge(
    storage: Storage,
    ledger: Ledger,
    done: list[int],
    info: dict[str, Any],
    vocabulary: gclip.Vocabulary,
) -> None:
    """Merge ``annotations.json``; a damaged shard file found there is deleted with its
    marker and its shard made pending, so the next run labels it anew, as the error says."""
    try:
        merge(storage, done, info, categories(vocabulary))
    except DamagedFileError as err:
        found = re.search(r"shard-(\d{6})", err.location)
        shard = int(found[1]) if found else None
        if shard is not None and shard in ledger.entries:
            storage.delete(shard_path(shard))
            ledger.write(replace(ledger.entries[shard], state=ShardState.PENDING))
            ledger.compact()
        raise DamagedFileError(
            err.location,
            err.problem,
            "Its shard was made pending: run the same jobs.label command again to label it "
            "anew and merge.",
        ) from None


def _check_fingerprint(
    storage: Storage, previous: RunRecord | None, fingerprint: str, allow_change: bool
) -> None:
    if previous is None or previous.fingerprint in (None, fingerprint):
        return
    if not allow_change:
        raise ConfigChangedError(
            f"{storage.root} holds a run whose labels were made otherwise: its settings read "
            "the same, so the model's weights or its resolved method (calibrated global "
            "blocks) differ. Use a new --output, or pass --allow-config-change to keep its "
            "finished shards and label the rest."
        )
    log.warning("settings changed since the last run in %s; continuing as asked", storage.root)


def _seed(resolution: Resolution) -> str | None:
    seed = resolution.model.get("random_seed")
    return None if seed is None else f"random-seed:{seed}"
