"""A benchmark, end to end: the split as a manifest, the labelling job, the score.

The job is the one users run (same planning, workers, label maps and resume), configured by
the preset: the preset is the config-file layer of :func:`pipeline.load_run_config` and the
user's overrides are flags, so ``run.json`` says where each setting came from. A rerun into the
same output resumes the labelling and scores again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gclip import parse_text
from gclip.catalog import is_remote
from pipeline.config import load_run_config
from pipeline.errors import InputError
from pipeline.formats.checkpoints import shipped_settings
from pipeline.formats.run_record import require_run
from pipeline.formats.storage import Storage
from pipeline.planning.manifest_writer import write_manifest
from pipeline.planning.sources import ManifestRow
from pipeline.reading.evaluation import Evaluation
from pipeline.reproduction.datasets import layout
from pipeline.reproduction.presets import Preset, preset, published
from pipeline.reproduction.scoring import benchmark_context, score_split, write_results
from pipeline.running.backends import Backend
from pipeline.running.coordinator import RunSummary, execute, prepare_run

log = logging.getLogger(__name__)
MANIFEST, VOCABULARY = "benchmark/manifest.parquet", "benchmark/vocabulary.json"


@dataclass(frozen=True, slots=True)
class BenchmarkSpec:
    """What to benchmark.

    Attributes:
        dataset: the benchmark's name (:data:`pipeline.reproduction.presets.DATASETS`).
        root: the folder the dataset unpacks to, or its mmseg data root.
        output: where the run, its label maps and the scores go.
        protocol: whose evaluation configs set the preset.
        limit: label and score only the split's first ``limit`` images.
        overrides: settings over the preset, shaped like the ``--config`` document
            (``model``, ``pretrained``, ``method``, ``inference``, ``threshold``, ...).
    """

    dataset: str
    root: str
    output: str
    protocol: str
    limit: int | None = None
    overrides: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class BenchmarkResult:
    """A benchmark's outcome.

    Attributes:
        record: ``benchmark.json`` as written.
        markdown: ``benchmark.md`` as written.
        scores: the split's scores.
        labelling: the labelling job's summary.
    """

    record: dict[str, Any]
    markdown: str
    scores: Evaluation
    labelling: RunSummary


def run_benchmark(spec: BenchmarkSpec, backend: Backend) -> BenchmarkResult:
    """List the split, label it through the job, score it; write ``benchmark.json``/``.md``.

    An image the job failed on has no label map: it is scored as missed (every pixel wrong).

    Raises:
        InputError: the dataset, its layout or a setting is wrong (nothing labelled yet).
    """
    if is_remote(spec.output):
        raise InputError(
            f"--output {spec.output}: a benchmark writes into a local folder (its datasets are "
            "read from disk too); copy the results to object storage afterwards."
        )
    dataset = layout(spec.dataset)
    chosen = preset(spec.dataset, spec.protocol)
    samples = dataset.samples(spec.root, spec.limit)
    storage = Storage(spec.output)
    rows = [ManifestRow(s.image_id, s.image, spec.dataset) for s in samples]
    write_manifest(rows, storage.uri(MANIFEST))
    storage.write_atomic(VOCABULARY, json.dumps(_vocabulary(chosen)).encode())
    config = load_run_config(_preset_layer(chosen, storage), spec.overrides or {}, shipped_settings)
    summary = execute(prepare_run(config), backend)
    log.info("%d images labelled, %d failed", summary.images_labelled, summary.images_failed)
    names = class_names(chosen)
    scores = score_split(spec.output, samples, dataset.truth, names)
    recorded = require_run(storage).config  # as execute() recorded it
    method = recorded["method"]["name"]
    context = benchmark_context(chosen, recorded, published(method, spec.dataset), spec.limit)
    record, markdown = write_results(spec.output, scores, context)
    return BenchmarkResult(record, markdown, scores, summary)


def class_names(chosen: Preset) -> list[str]:
    """One name per label: each line's first name, and ``background`` for a background line
    (whose first name is one background concept, e.g. ``sky``)."""
    names = [line.split(",")[0].strip() for line in chosen.names.splitlines()]
    return ["background", *names[1:]] if chosen.background else names


def _vocabulary(chosen: Preset) -> dict[str, Any]:
    """The class-name file as a JSON vocabulary: label = line index; on benchmarks with
    background, pixels under ``prob_thd`` become background, as the repos score them. A name
    on two lines stays on both (SCLIP's object file has ``bed`` twice), as in the repos."""
    vocabulary = parse_text(
        chosen.names, background_first_line=chosen.background, repeated_names=True
    )
    document = vocabulary.to_json()
    if chosen.threshold is not None:
        document.update(threshold=chosen.threshold, below_threshold="background")
    return document


def _preset_layer(chosen: Preset, storage: Storage) -> dict[str, Any]:
    """The preset as a ``--config`` document: the job's settings below the user's flags."""
    return {
        "manifest": storage.uri(MANIFEST),
        "vocabulary": storage.uri(VOCABULARY),
        "output": storage.root,
        "inference": chosen.inference(),
        "png_labels": True,
    }
