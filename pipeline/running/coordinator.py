"""The coordinator: validate and plan, resolve, resume, dispatch, finish.

Numbered steps of a run:
1. :func:`prepare_run`, on the driver without Ray or torch: the weights source, the vocabulary
   and the manifest (footers, then one streaming pass over its ids) are checked and the shards
   planned against the previous plan in the output folder; the ledger is reconciled with the
   shards' markers. Any problem is an :class:`InputError`. ``--dry-run`` stops here.
2. :func:`execute` resolves the segmenter recipe once on the model (its depth's defaults,
   GCLIP's calibration), fingerprints the resolved settings and refuses an output folder that
   holds a run with other ones (unless told otherwise), then writes the plan to the ledger.
3. Shards are dispatched (:func:`pipeline.running.dispatch.dispatch`); finished shards are
   never redone or rewritten (``retry_failed`` relabels the failed images of finished shards,
   replacing their files).
4. ``run.json`` is written from the ledger's counts, and a run small enough to be useful as one
   file gets ``annotations.json`` merged from its shards. A crash at any step after 2 leaves
   ``run.json`` ``failed`` with the error.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import gclip
from gclip.catalog import check_source, is_remote
from pipeline.config import RunConfig, labelling_fingerprint
from pipeline.errors import ConfigChangedError, InputError, SetupError
from pipeline.formats.coco import categories
from pipeline.formats.layout import ANNOTATIONS, FAILURES, FORMAT_VERSION
from pipeline.formats.outputs import merge, read_run, write_run
from pipeline.formats.shard_files import ShardContext
from pipeline.formats.storage import Storage, resolve
from pipeline.planning.manifest import Manifest, first_uris, open_manifest
from pipeline.planning.plan import Plan
from pipeline.running.backends import Backend
from pipeline.running.dispatch import dispatch
from pipeline.running.ledger import DONE, Ledger, ShardEntry
from pipeline.running.recipe import Resolution, SegmenterSpec
from pipeline.running.records import coco_info, counts, now, run_record
from pipeline.running.resume import plan_with_previous
from pipeline.running.worker import ShardSettings

log = logging.getLogger(__name__)

CALIBRATION_IMAGES = 8


@dataclass(frozen=True, slots=True)
class RunSummary:
    """What a finished (or failed) run reports; the job's exit code follows ``ok``.

    Attributes:
        retries: attempts retried in this run, by cause (``died``, ``oom``, ``timeout``).
        merged: ``annotations.json`` was written (the run was within ``merge_limit``).
    """

    shards: int
    shards_failed: int
    images_labelled: int
    images_failed: int
    seconds: float
    failures_by_error: dict[str, int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    merged: bool = False

    @property
    def ok(self) -> bool:
        return self.shards_failed == 0


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A validated, planned run: everything known before Ray or the model.

    Attributes:
        entries: the ledger's entry per planned shard, reconciled with the shards' markers.
        previous: the output folder's ``run.json``, if it has one.
    """

    config: RunConfig
    vocabulary: gclip.Vocabulary
    manifest: Manifest
    plan: Plan
    entries: dict[int, ShardEntry]
    previous: dict[str, Any] | None
    calibration_uris: tuple[str, ...]

    @property
    def done(self) -> int:
        return sum(e.state == DONE for e in self.entries.values())


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
        InputError: naming the problem; nothing has started and nothing was written.
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
        storage = Storage(config.output, create=False)
        previous = read_run(storage)
        _check_format(storage, previous)
        manifest = open_manifest(config.manifest)
        plan, entries = plan_with_previous(storage, manifest, config.shard_size, config.png_labels)
        uris: tuple[str, ...] = ()
        if config.method.needs_calibration:
            # Every worker and every resumed run fuse the same blocks: they come from the
            # manifest's first images, not from whichever shard a worker saw first.
            uris = tuple(first_uris(manifest, CALIBRATION_IMAGES))
    except InputError:
        raise
    except (ValueError, OSError) as err:
        raise InputError(str(err)) from err
    return PreparedRun(config, vocabulary, manifest, plan, entries, previous, uris)


def execute(
    run: PreparedRun,
    backend: Backend,
    allow_config_change: bool = False,
    retry_failed: bool = False,
) -> RunSummary:
    """Steps 2-4 of a prepared run on ``backend`` (closed at the end)."""
    started = time.time()
    config, vocabulary = run.config, run.vocabulary
    storage = Storage(config.output)
    try:
        try:
            resolution = backend.resolve(
                SegmenterSpec(config.model, config.pretrained, config.method, config.device),
                run.calibration_uris,
                config.inference.crop,
            )
        except SetupError as err:
            if run.previous is None:  # a first run leaves its failure where status looks
                record = run_record(config, vocabulary, None, None, started, "failed", err)
                write_run(storage, record)
            raise
        weights = resolution.model.get("weights_sha256") or _seed(resolution)
        fingerprint = labelling_fingerprint(
            config, resolution.spec.method, weights, vocabulary.fingerprint
        )
        _check_fingerprint(storage, run.previous, fingerprint, allow_config_change)
        record = run_record(config, vocabulary, resolution, fingerprint, started, "running")
        write_run(storage, record)
        try:
            totals, retries = _label(run, backend, storage, resolution, fingerprint, retry_failed)
        except BaseException as err:
            state = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
            record = run_record(config, vocabulary, resolution, fingerprint, started, state, err)
            write_run(storage, record)
            raise
        seconds = time.time() - started
        state = "finished" if totals["shards_failed"] == 0 else "failed"
        record = run_record(config, vocabulary, resolution, fingerprint, started, state)
        record["counts"] = totals
        record["timings"].update(finished=now(), seconds=round(seconds, 3))
        write_run(storage, record)
        return RunSummary(
            shards=totals["shards"],
            shards_failed=totals["shards_failed"],
            images_labelled=totals["images_labelled"],
            images_failed=totals["images_failed"],
            seconds=seconds,
            failures_by_error=totals["failures_by_error"],
            retries=retries,
            merged=totals["merged"],
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
    """Steps 3-4: persist the plan, dispatch, merge; return the counts and retries by cause."""
    config = run.config
    entries = dict(run.entries)
    retried = {
        i for i, e in entries.items() if retry_failed and e.state == DONE and e.images_failed
    }
    for index in retried:
        entries[index] = replace(entries[index], attempts=0)
    ledger = Ledger(storage)
    ledger.compact(entries)  # the plan, durable before any shard runs
    todo = [s for s in run.plan.shards if entries[s.index].state != DONE or s.index in retried]
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
            context=ShardContext(fingerprint, info, run.vocabulary, run.manifest.id_kind),
            inference=config.inference,
            images_per_call=config.images_per_call,
            decode_threads=config.decode_threads,
            png_labels=config.png_labels,
            min_instance_area=config.min_instance_area,
        )
        executor = backend.executor(config, resolution.spec, settings)
        try:
            retries = dispatch(executor, todo, ledger, config.max_attempts, retried)
        finally:
            executor.shutdown()
            ledger.flush()
    ledger.compact()
    totals = counts(ledger.entries.values())
    totals["retries"] = retries
    totals["merged"] = config.merge_limit > 0 and totals["images_labelled"] <= config.merge_limit
    if totals["merged"]:
        done = sorted(i for i, e in ledger.entries.items() if e.state == DONE)
        merge(storage, done, info, categories(run.vocabulary))
    else:  # a merged file of an earlier, smaller run would be stale
        storage.delete(ANNOTATIONS)
        storage.delete(FAILURES)
    return totals, retries


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


def _seed(resolution: Resolution) -> str | None:
    seed = resolution.model.get("random_seed")
    return None if seed is None else f"random-seed:{seed}"
