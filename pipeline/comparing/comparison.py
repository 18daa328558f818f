"""A comparison: one sample of a manifest labelled under 2-8 variants, side by side.

Steps: check every variant's settings (before any work); draw the sample
(:mod:`pipeline.comparing.sample`) into ``DIR/sample.parquet``; label it once per variant
through the labelling job itself (``jobs.label --config DIR/configs/NAME.json``, into
``DIR/variants/NAME``: resumable, a finished variant is not labelled again); read each
variant's figures, score them on the sample's ground truth when given; write ``DIR/best.json``
(the best variant's settings as a run config for the whole manifest), ``DIR/compare.json``
(``schemas/compare.schema.json``) and ``DIR/compare.html``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import schemas
from pipeline.comparing.compare_html import Column, page
from pipeline.comparing.figures import VariantFigures, score, variant_figures, write_sample_truth
from pipeline.comparing.sample import SAMPLE, draw_sample, write_sample
from pipeline.comparing.variants import (
    CONFIGS,
    VARIANTS,
    Variant,
    VariantRun,
    prepare_variant,
    same_classes,
)
from pipeline.config import RunConfig
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import Manifest
from pipeline.running.backends import Backend
from pipeline.running.executors import Executor
from pipeline.running.recipe import Resolution, SegmenterSpec
from pipeline.running.stages import ShardSettings

COMPARE, COMPARE_PAGE, BEST = "compare.json", "compare.html", "best.json"
BEST_OUTPUT = "best"  # best.json's output: DIR/best, the whole manifest labelled the best way
Label = Callable[[list[str]], int]  # the labelling job: argv -> exit code


class VariantFailed(Exception):
    """The labelling job did not finish a variant; ``code`` is its exit code."""

    def __init__(self, name: str, code: int) -> None:
        super().__init__(
            f"variant {name}: the labelling job exited {code} (its messages are above); "
            "fix the cause and run the same command again: finished variants are kept."
        )
        self.name, self.code = name, code


class KeptOpen:
    """A backend each labelling run may close: the comparison closes it once, at its end, so
    every variant runs on the same (embedded) Ray."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def check_storage(self, manifest: Manifest, output: str) -> None:
        self._backend.check_storage(manifest, output)

    def resolve(
        self, spec: SegmenterSpec, calibration_uris: tuple[str, ...], side: int
    ) -> Resolution:
        return self._backend.resolve(spec, calibration_uris, side)

    def executor(self, config: RunConfig, spec: SegmenterSpec, settings: ShardSettings) -> Executor:
        return self._backend.executor(config, spec, settings)

    def close(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Comparison:
    """What to compare.

    Attributes:
        manifest, vocabulary, output: as given (``output`` is ``DIR``).
        size, seed: the sample (:func:`pipeline.comparing.sample.draw_sample`).
        variants: 2-8, in column order (:func:`pipeline.comparing.variants.parse_variants`).
        command_line: settings of the labelling job's flags given to the comparison, under
            each variant's own (:func:`pipeline.comparing.variants.flag_settings`).
        ground_truth, values: as ``jobs.evaluate --ground-truth --values`` take them.
        label_flags: passed to every labelling run (``--allow-config-change``...).
    """

    manifest: str
    vocabulary: str
    output: str
    size: int
    variants: tuple[Variant, ...]
    seed: int = 0
    command_line: Mapping[str, Any] = field(default_factory=dict)
    ground_truth: str | None = None
    values: str = "indices"
    label_flags: tuple[str, ...] = ()


def compare(comparison: Comparison, label: Label) -> dict[str, Any]:
    """Run the comparison (see the module); return ``compare.json``'s document.

    Raises:
        InputError: a bad variant, sample or ground truth, found before any labelling.
        VariantFailed: the labelling job did not finish a variant.
    """
    c = comparison
    storage = Storage(c.output)
    # 1. Everything that can be refused, before any labelling.
    below = {"vocabulary": c.vocabulary, **c.command_line}
    runs = [
        prepare_variant(v, below, storage.uri(SAMPLE), storage.uri(f"{VARIANTS}/{v.name}"))
        for v in c.variants
    ]
    sample = draw_sample(c.manifest, c.size, c.seed)
    ids = sample["image_id"].to_pylist()
    write_sample(storage, sample)
    truth = None
    if c.ground_truth is not None:
        classes = same_classes(runs)
        truth = write_sample_truth(storage, c.ground_truth, c.values, classes, ids)
    # 2. The labelling job, a variant at a time; then what the page shows of each.
    for run in runs:
        _label(storage, run.variant.name, run.document, c.label_flags, label)
    figures = {r.variant.name: variant_figures(r.output, len(ids)) for r in runs}
    best = None
    if truth is not None:
        for run in runs:
            scores = score(run.output, truth)
            figures[run.variant.name] = replace(figures[run.variant.name], evaluation=scores)
        best = _write_best(storage, c.manifest, runs, figures)
    rows = sample.select(["image_id", "uri"]).to_pylist()
    columns = [
        Column(
            r.variant.name, r.variant.file, r.variant.settings, r.output, figures[r.variant.name]
        )
        for r in runs
    ]
    best_name = best.variant.name if best else None
    storage.write_atomic(COMPARE_PAGE, page(c.manifest, c.seed, rows, columns, best_name).encode())
    record = _record(c, ids, best_name, runs, figures)
    schemas.validate(record, "compare")
    storage.write_atomic(COMPARE, (json.dumps(record, indent=1) + "\n").encode())
    return record


def _label(
    storage: Storage, name: str, document: Mapping[str, Any], flags: Sequence[str], label: Label
) -> None:
    """``jobs.label --config DIR/configs/NAME.json``: the file kept in ``DIR`` for people,
    a local copy for the job (which reads local ``--config`` files)."""
    text = json.dumps(document, indent=1) + "\n"
    storage.write_atomic(f"{CONFIGS}/{name}.json", text.encode())
    with tempfile.TemporaryDirectory() as folder:
        file = os.path.join(folder, f"{name}.json")
        with open(file, "w", encoding="utf-8") as handle:
            handle.write(text)
        code = label(["--config", file, *flags])
    if code != 0:
        raise VariantFailed(name, code)


def _write_best(
    storage: Storage, manifest: str, runs: Sequence[VariantRun], figures: dict[str, VariantFigures]
) -> VariantRun:
    """Write ``BEST``: the run of highest mIoU (the first of equals, as ``max`` keeps it), as a
    run config of the whole manifest into ``DIR/best``; return that run."""
    best = max(runs, key=lambda r: figures[r.variant.name].to_json()["miou"])
    whole = {**best.document, "manifest": manifest, "output": storage.uri(BEST_OUTPUT)}
    schemas.validate(whole, "run_config")
    storage.write_atomic(BEST, (json.dumps(whole, indent=1) + "\n").encode())
    return best


def _record(
    c: Comparison,
    ids: list[Any],
    best: str | None,
    runs: Sequence[VariantRun],
    figures: dict[str, VariantFigures],
) -> dict[str, Any]:
    """``compare.json``'s document (``schemas/compare.schema.json``)."""
    return {
        "manifest": c.manifest,
        "vocabulary": c.vocabulary,
        "sample": {"size": len(ids), "seed": c.seed, "image_ids": ids},
        "ground_truth": c.ground_truth,
        "best": best,
        "variants": [
            {
                "name": r.variant.name,
                "file": r.variant.file,
                "config": dict(r.document),
                "figures": figures[r.variant.name].to_json(),
            }
            for r in runs
        ],
    }
