"""The hand-over from the job to the model: what the worker gives the segmenter is what the
run's settings say, and the job's labels are the segmenter's own."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from fakes import Recording
from PIL import Image
from test_pipeline_local import config_for, make_dataset

import gclip
from gclip import InferenceConfig
from pipeline import LocalBackend, load_run_config, run_labelling
from pipeline.config import no_checkpoint
from pipeline.formats.checkpoints import shipped_settings
from pipeline.formats.coco import decode_label_map
from pipeline.running.recipe import SegmenterSpec

ROOT = Path(__file__).resolve().parents[1]


def test_the_worker_hands_the_runs_inference_config_and_vocabulary_to_the_segmenter(tmp_path):
    """Before: every fake ignored the config, so a worker that dropped it passed all tests."""
    root = make_dataset(tmp_path, count=5)
    inference = InferenceConfig(short_side=24, crop=16, stride=8, logit_scale=33.0)
    config = config_for(root, inference=inference, images_per_call=2)
    Recording.calls.clear()
    assert run_labelling(config, LocalBackend(Recording())).ok
    assert Recording.calls, "the segmenter was never called"
    for shapes, vocabulary, given in Recording.calls:
        assert given == inference and given is not None
        assert [c.name for c in vocabulary.classes] == ["dark", "bright"]
        assert 1 <= len(shapes) <= 2  # images_per_call
    labelled = sum(len(shapes) for shapes, _, _ in Recording.calls)
    assert labelled == 5


def test_the_jobs_labels_are_the_segmenters_own_on_the_demo_model(tmp_path):
    """The demo run's label maps equal ``Segmenter.segment(images, vocabulary, inference)``
    called directly on the same images with the run's resolved settings."""
    demo = json.loads((ROOT / "demo" / "config.json").read_text())
    manifest = pq.read_table(ROOT / "demo" / "manifest.parquet").slice(0, 3)
    pq.write_table(manifest, tmp_path / "m.parquet")
    uris = [str(ROOT / "demo" / u) for u in manifest["uri"].to_pylist()]  # beside it
    pq.write_table(manifest.set_column(1, "uri", [uris]), tmp_path / "m.parquet")
    values = {
        **demo,
        "manifest": str(tmp_path / "m.parquet"),
        "vocabulary": str(ROOT / "demo" / "vocabulary.txt"),
        "output": str(tmp_path / "out"),
    }
    config = load_run_config(values, {}, shipped_settings)
    assert (
        config.labelling.inference != load_run_config(values, {}, no_checkpoint).labelling.inference
    )
    assert run_labelling(config, LocalBackend()).ok
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    method = gclip.MethodConfig(**run["resolved"]["method"])
    segmenter = SegmenterSpec("demo", config.labelling.pretrained, method, "cpu")()
    vocabulary = gclip.load_vocabulary(config.vocabulary)
    images = [np.asarray(Image.open(u).convert("RGB")) for u in uris]
    direct = segmenter.segment(images, vocabulary, config.labelling.inference)
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    index_of = {c["id"]: i for i, c in enumerate(coco["categories"])}
    for image, result in zip(coco["images"], direct, strict=True):
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        labels_hw = decode_label_map(anns, (image["height"], image["width"]), index_of)
        expected = np.asarray(result.labels_hw)
        assert labels_hw.shape == expected.shape
        assert np.array_equal(labels_hw, expected), image["image_id"]
        png = Image.open(io.BytesIO((tmp_path / "out" / image["label_file"]).read_bytes()))
        assert np.array_equal(np.asarray(png), expected)
