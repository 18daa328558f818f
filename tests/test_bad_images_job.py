"""The red team's images through the labelling job on the demo model: thin strips, a PNG
bomb, a 108-Mpx photo and an 81-Mpx one among good images. Before: the model actor grew to
21 GB on the strips and the shard failed with every good image in it; the large photos
killed the local raylet. Peak memory is printed by ``benchmarks/bad_images.py``."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from test_budget_images import png_bomb

from pipeline import LocalBackend, load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings

pytestmark = pytest.mark.slow


def write_bad_folder(root, large: bool = True):
    """Good scenes and the culprits, with a manifest; returns the culprits' ids."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    files = {}
    for i in range(3):
        files[f"good{i}.png"] = rng.integers(0, 255, (96, 128, 3), np.uint8)
    files["strip_1x300.png"] = rng.integers(0, 255, (1, 300, 3), np.uint8)
    files["strip_1x1000.png"] = rng.integers(0, 255, (1, 1000, 3), np.uint8)
    for name, array in files.items():
        Image.fromarray(array).save(root / "img" / name)
    (root / "img" / "bomb_30000x30000.png").write_bytes(png_bomb())
    if large:
        for name, (w, h) in {
            "photo_12000x9000.jpg": (12000, 9000),
            "photo_9000x9000.jpg": (9000, 9000),
        }.items():
            Image.new("RGB", (w, h), (90, 140, 200)).save(root / "img" / name, quality=80)
    names = sorted(p.name for p in (root / "img").iterdir())
    pq.write_table(
        pa.table({"image_id": names, "uri": [f"img/{n}" for n in names]}), root / "m.parquet"
    )
    (root / "v.txt").write_text("background\nred circle\nblue square\n")
    return names


def test_every_good_image_is_labelled_and_each_culprit_is_a_failure_naming_its_size(tmp_path):
    names = write_bad_folder(tmp_path)
    values = {
        "manifest": str(tmp_path / "m.parquet"),
        "vocabulary": str(tmp_path / "v.txt"),
        "output": str(tmp_path / "out"),
        "model": "demo",
        "shard_size": 16,
        "images_per_call": 2,
    }
    summary = run_labelling(load_run_config(values, {}, shipped_settings), LocalBackend())
    assert summary.ok and summary.shards_failed == 0
    marker = json.loads((tmp_path / "out" / "shards" / "shard-000000.json").read_text())
    failed = {f["image_id"]: f["message"] for f in marker["failures"]}
    assert set(failed) == {"bomb_30000x30000.png", "photo_12000x9000.jpg"}
    assert "30000x30000 = 900.0 Mpx" in failed["bomb_30000x30000.png"]
    assert "12000x9000 = 108.0 Mpx" in failed["photo_12000x9000.jpg"]
    assert all("--max-image-pixels" in m for m in failed.values())
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    labelled = {i["image_id"]: (i["width"], i["height"]) for i in coco["images"]}
    assert set(labelled) == set(names) - set(failed)
    assert labelled["strip_1x1000.png"] == (1000, 1) and labelled["photo_9000x9000.jpg"] == (
        9000,
        9000,
    )
    # the 108-Mpx photo labels once the limit is raised for it
    values["output"] = str(tmp_path / "raised")
    values["manifest"] = str(tmp_path / "one.parquet")
    pq.write_table(
        pa.table({"image_id": ["photo"], "uri": ["img/photo_12000x9000.jpg"]}),
        tmp_path / "one.parquet",
    )
    raised = load_run_config(values, {"max_image_pixels": 120_000_000}, shipped_settings)
    summary = run_labelling(raised, LocalBackend())
    assert summary.ok and summary.images_labelled == 1 and summary.images_failed == 0
    run = json.loads((tmp_path / "raised" / "run.json").read_text())
    assert run["config"]["max_image_pixels"] == 120_000_000
    assert run["config"]["inference"]["max_long_side"] == 2048
