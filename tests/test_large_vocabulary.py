"""Vocabularies of thousands of classes: uint16 label maps, 16-bit PNGs, bounded memory."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from test_pipeline_local import make_dataset

from gclip.demo_world import CLASS_NAMES
from jobs import evaluate as evaluate_job
from pipeline import LocalBackend, load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings
from pipeline.formats.coco import CocoLabelMaps


def test_a_1203_class_vocabulary_runs_through_the_job(tmp_path):
    """LVIS-sized: every label map is uint16, its PNG 16-bit, and both agree with the COCO
    masks; the names go through the model in chunks of 100."""
    root = make_dataset(tmp_path, count=4)
    # the demo model's own classes last, so what it recognises has indices beyond a byte
    lines = [*(f"thing number {i}" for i in range(1203 - len(CLASS_NAMES))), *CLASS_NAMES]
    (root / "lvis.txt").write_text("\n".join(lines) + "\n")
    values = {
        "manifest": str(root / "m.parquet"),
        "vocabulary": str(root / "lvis.txt"),
        "output": str(root / "out"),
        "model": "demo",
        "png_labels": True,
        "inference": {"short_side": 64, "crop": 64, "stride": 32, "name_chunk": 100},
    }
    summary = run_labelling(load_run_config(values, {}, shipped_settings), LocalBackend())
    assert summary.ok and summary.images_labelled == 4
    coco = json.loads((root / "out" / "annotations.json").read_text())
    assert len(coco["categories"]) == 1203
    maps = CocoLabelMaps(coco)
    seen = set()
    for image in coco["images"]:
        png = Image.open(root / "out" / image["label_file"])
        assert png.mode.startswith("I;16")
        labels = np.asarray(png)
        np.testing.assert_array_equal(labels, maps.label_map(image))  # same indices
        ids = {coco["categories"][v]["id"] for v in np.unique(labels) if v != 65535}
        assert ids == {
            a["category_id"] for a in coco["annotations"] if a["image_id"] == image["id"]
        }
        seen |= set(np.unique(labels).tolist())
    assert max(seen - {65535}) > 255  # indices beyond a byte were written and read back
    # its own label maps as ground truth: 16-bit PNGs read back, every class IoU 1
    predictions, truth = str(root / "out"), str(root / "out" / "labels")
    assert evaluate_job.main(["--predictions", predictions, "--ground-truth", truth]) == 0
    report = json.loads((root / "out" / "evaluation.json").read_text())
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0
