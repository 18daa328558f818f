"""Failures on real Ray actors: a model that cannot be built, a hung shard, CUDA out of memory."""

from __future__ import annotations

import json

import pytest
from fakes import BrightnessSegmenter, BrokenFactory, OnceThen
from test_pipeline_local import config_for, ledger_of, make_dataset

from pipeline import LocalBackend, RayBackend, SetupError, run_labelling

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def clean_annotations(root):
    out = root / "clean"
    run_labelling(config_for(root, output=str(out)), LocalBackend(BrightnessSegmenter()))
    return (out / "annotations.json").read_bytes()


def test_a_worker_that_cannot_build_its_model_ends_the_run(ray_local, tmp_path):
    """Before: the failing constructor was retried as a dead worker and the coordinator died
    with "Actor(...) is not in list", leaving run.json "running" for ever."""
    root = make_dataset(tmp_path)
    calls = tmp_path / "calls.txt"
    config = config_for(root)
    with pytest.raises(SetupError, match="ValueError: cannot read weights /models/vit.pt"):
        run_labelling(config, RayBackend(factory=BrokenFactory(calls)))
    assert calls.read_text().splitlines() == ["called"]  # never retried
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["state"] == "failed"
    assert run["error"] == "ValueError: cannot read weights /models/vit.pt: truncated file"
    assert "\x1b[" not in run["traceback"] and "fakes.py" in run["traceback"]
    assert not (root / "out" / "shards").exists()


def test_a_hung_shard_is_restarted_after_its_deadline(ray_local, tmp_path):
    root = make_dataset(tmp_path)
    marker = tmp_path / "hang-once"
    marker.touch()
    config = config_for(root, shard_timeout_s=4.0)
    summary = run_labelling(config, RayBackend(factory=OnceThen(marker, "hang")))
    assert summary.ok and summary.retries == {"timeout": 1}
    entries = sorted(ledger_of(root / "out").values(), key=lambda e: e.shard)
    timed_out = [e for e in entries if e.retries]
    assert len(timed_out) == 1 and timed_out[0].retries == {"timeout": 1}
    assert timed_out[0].attempts == 2 and timed_out[0].state == "done"
    assert [e.attempts for e in entries if not e.retries] == [1, 1]  # none lost a try
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["counts"]["retries"] == {"timeout": 1}
    assert (root / "out" / "annotations.json").read_bytes() == clean_annotations(root)


def test_cuda_out_of_memory_is_retried_not_a_bug(ray_local, tmp_path):
    root = make_dataset(tmp_path)
    marker = tmp_path / "oom-once"
    marker.touch()
    summary = run_labelling(config_for(root), RayBackend(factory=OnceThen(marker, "oom")))
    assert summary.ok and summary.retries == {"oom": 1} and summary.images_failed == 0
    assert (root / "out" / "annotations.json").read_bytes() == clean_annotations(root)
