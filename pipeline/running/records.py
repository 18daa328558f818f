"""What a run states about itself: ``run.json`` and the COCO ``info`` of its files."""

from __future__ import annotations

import traceback
from datetime import UTC, datetime
from typing import Any

import gclip
from gclip.config import to_json
from pipeline.config import RunConfig
from pipeline.errors import SetupError, plain
from pipeline.formats.layout import FORMAT_VERSION
from pipeline.formats.run_record import RunState
from pipeline.running.recipe import Resolution


def coco_info(
    config: RunConfig, vocabulary: gclip.Vocabulary, resolution: Resolution, fingerprint: str
) -> dict[str, Any]:
    """The COCO ``info`` record: model, weights, method as resolved, settings, vocabulary."""
    labelling = config.labelling
    return {
        "description": "gclip-label pseudo-labels",
        "version": "0.1.0",
        "format_version": FORMAT_VERSION,
        "model": labelling.model,
        "pretrained": labelling.pretrained,
        "weights": resolution.model.get("weights"),
        "weights_sha256": resolution.model.get("weights_sha256"),
        "method": labelling.method.name,
        "method_options": to_json(resolution.spec.method),
        "inference": to_json(labelling.inference),
        "vocabulary_sha256": vocabulary.fingerprint,
        "thresholds": {
            c.name: t for c, t in zip(vocabulary.classes, vocabulary.thresholds, strict=True)
        },
        # Instances split thing classes into components of at least this many pixels.
        "min_instance_area": labelling.min_instance_area,
        "fingerprint": fingerprint,
    }


def run_record(
    config: RunConfig,
    vocabulary: gclip.Vocabulary,
    resolution: Resolution | None,
    fingerprint: str | None,
    started: float,
    state: RunState,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """``run.json``: the config as given and as resolved, with where each setting came from."""
    record: dict[str, Any] = {
        "state": state,
        "format_version": FORMAT_VERSION,
        "config": config.to_json(),
        "settings_sources": dict(config.sources),
        "fingerprint": fingerprint,
        "vocabulary": vocabulary.to_json(),
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


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
