"""On Ray: an image that kills its worker fails alone, and progress shows within shards."""

from __future__ import annotations

import json
import time

import pytest
from fakes import BrightnessSegmenter, Killer, Slowed
from test_pipeline_local import config_for, ledger_of, make_dataset

from pipeline import RayBackend, run_labelling
from pipeline.formats.descriptors import Shard
from pipeline.formats.shard_files import ShardContext
from pipeline.planning.manifest import open_manifest
from pipeline.planning.plan import plan_shards
from pipeline.running.dispatch import WORKER_LOST
from pipeline.running.ray_executor import RayExecutor
from pipeline.running.stages import ShardSettings, ShardTask

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_an_image_that_kills_its_worker_fails_alone(ray_local, tmp_path):
    """Before: the shard failed with every good image in it once its attempts were spent."""
    root = make_dataset(tmp_path)
    config = config_for(root, shard_size=7, images_per_call=8, max_attempts=2)
    summary = run_labelling(config, RayBackend(factory=Killer()))
    assert summary.ok and summary.images_labelled == 6 and summary.images_failed == 1
    [entry] = ledger_of(root / "out").values()
    assert entry.state == "done" and entry.retries.get("died", 0) >= 2
    marker = json.loads((root / "out" / "shards" / "shard-000000.json").read_text())
    [failure] = marker["failures"]
    assert failure["image_id"] == "img/3" and failure["error"] == WORKER_LOST
    assert "labelling this image alone was lost" in failure["message"]
    coco = json.loads((root / "out" / "annotations.json").read_text())
    assert sorted(i["image_id"] for i in coco["images"]) == sorted(
        f"im{i}" for i in range(7) if i != 3
    )


def test_progress_shows_within_a_shard(ray_local, tmp_path):
    """Before: a run sat at 0/N until its first shard ended."""
    root = make_dataset(tmp_path)
    [shard] = plan_shards(open_manifest(str(root / "m.parquet")), 7).shards
    assert isinstance(shard, Shard)
    from gclip import InferenceConfig, parse_text

    context = ShardContext("0" * 64, {}, parse_text("dark\nbright\n"), "string")
    settings = ShardSettings(context, InferenceConfig(), images_per_call=1)
    executor = RayExecutor(Slowed(BrightnessSegmenter(), 0.4), settings, str(root / "out"), 1)
    try:
        while not executor.capacity:
            executor.wait()
        executor.submit(ShardTask(shard))
        seen, ended = [], []
        deadline = time.monotonic() + 120
        while not ended and time.monotonic() < deadline:
            ended = executor.wait()
            seen.append(executor.images_in_flight())
        assert ended and ended[0].kind == "done"
        assert any(0 < n < 7 for n in seen), seen
    finally:
        executor.shutdown()
