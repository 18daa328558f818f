"""The three stages of a shard: the same labels as one call, and host stages free of torch."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

from fakes import BrightnessSegmenter
from test_pipeline_local import config_for, make_dataset

from gclip import parse_text
from pipeline.formats.shard_files import ShardContext
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import open_manifest
from pipeline.planning.plan import plan_shards
from pipeline.running.stages import (
    ShardSettings,
    ShardTask,
    decode_shard,
    encode_shard,
    process_shard,
    segment_shard,
)

ROOT = Path(__file__).resolve().parents[1]


def settings_for():
    vocabulary = parse_text("dark, shadow\nbright\n")
    context = ShardContext("0" * 64, {"model": "fake"}, vocabulary, "string")
    return ShardSettings(context, config_for(Path("/x")).labelling.inference, images_per_call=2)


def test_stages_in_separate_processes_write_what_one_call_writes(tmp_path):
    root = make_dataset(tmp_path, count=5, broken=(2,))
    shard = plan_shards(open_manifest(str(root / "m.parquet")), 5).shards[0]
    settings = settings_for()
    whole = Storage(str(tmp_path / "whole"))
    result = process_shard(BrightnessSegmenter(), ShardTask(shard), settings, whole)
    staged = Storage(str(tmp_path / "staged"))
    # every hand-over is pickled, as Ray's object store does between processes
    decoded = pickle.loads(pickle.dumps(decode_shard(ShardTask(shard), settings, staged)))
    segmented = pickle.loads(pickle.dumps(segment_shard(BrightnessSegmenter(), decoded, settings)))
    staged_result = encode_shard(segmented, settings, staged)
    assert (staged_result.images_done, staged_result.images_failed) == (4, 1)
    assert (result.images_done, result.images_failed) == (4, 1)
    for relative in whole.list("coco") + whole.list("shards"):
        assert staged.read(relative) == whole.read(relative)
    assert 0 < staged_result.host_seconds <= staged_result.seconds


def test_host_stages_import_no_torch():
    """Host tasks live in Ray workers that must start fast: they never import torch."""
    code = (
        "import sys, pickle; import pipeline.running.executors, pipeline.running.stages, pipeline.running.worker; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
