"""Runs to export: a few demo scenes labelled by the demo model (PNG label maps), and a fast
run of a stand-in segmenter without PNGs (label maps rasterised from the COCO masks), whose
image ids hold dots and slashes and whose images are PNG and JPEG."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image

from pipeline import LocalBackend, RunConfig, load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings
from pipeline.formats.coco import decode_label_map
from pipeline.formats.storage import read_bytes

ROOT = Path(__file__).resolve().parents[1]
DEMO_IMAGES = 6


def _cached(base: Path, name: str, make) -> Path:
    """A run made once per test session (shared by every module), in ``base/name``."""
    out = base / name / "out"
    if (
        not (out / "run.json").exists()
        or json.loads((out / "run.json").read_text())["state"] != "finished"
    ):
        shutil.rmtree(base / name, ignore_errors=True)
        (base / name).mkdir(parents=True)
        make(base / name)
    return out


def make_demo_run(root: Path) -> None:
    demo = json.loads((ROOT / "demo" / "config.json").read_text())
    manifest = pq.read_table(ROOT / "demo" / "manifest.parquet").slice(0, DEMO_IMAGES)
    pq.write_table(manifest, root / "m.parquet")
    for uri in manifest["uri"].to_pylist():  # relative uris, resolved beside the manifest
        (root / uri).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "demo" / uri, root / uri)
    values = {
        **demo,
        "manifest": str(root / "m.parquet"),
        "vocabulary": str(ROOT / "demo" / "vocabulary.txt"),
        "output": str(root / "out"),
        "shard_size": 2,
    }
    assert run_labelling(load_run_config(values, {}, shipped_settings), LocalBackend()).ok


FAKE_IDS = ["a/b.c.png", "a/b_c.png", "plain", "x.y/z.jpg", "%2E.png", "deep/er/img.7.png", "n8"]


def make_fake_run(root: Path) -> None:
    """Seven images of different brightness (so different mean confidences), PNG and JPEG."""
    rng = np.random.default_rng(5)
    uris = []
    for n, image_id in enumerate(FAKE_IDS):
        height, width = 9 + n, 14 - n % 3
        array = np.full((height, width, 3), 40 + 25 * n, np.uint8)
        array[:, : 2 + n % 4] = 255 - 20 * (n % 3)
        array[rng.random((height, width)) < 0.1] = 0
        if n % 3 == 2:  # all bright: no "dark" class
            array[:] = 200 + n
        suffix = ".jpg" if image_id.endswith(".jpg") else ".png"
        path = root / "img" / f"{n}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array).save(path, quality=95)
        uris.append(str(path))
    table = pa.table({"image_id": FAKE_IDS, "uri": uris})
    pq.write_table(table, root / "m.parquet")
    (root / "vocab.txt").write_text("dark, shadow\nbright\n")
    config = RunConfig.from_settings(
        manifest=str(root / "m.parquet"),
        vocabulary=str(root / "vocab.txt"),
        output=str(root / "out"),
        shard_size=3,
        pretrained="none",
    )
    assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok


def demo_output(factory: pytest.TempPathFactory) -> Path:
    """The demo run's output folder, labelled once per session (a fixture's body)."""
    return _cached(factory.getbasetemp(), "export-demo", make_demo_run)


def fake_output(factory: pytest.TempPathFactory) -> Path:
    """The stand-in run's output folder, labelled once per session (a fixture's body)."""
    return _cached(factory.getbasetemp(), "export-fake", make_fake_run)


def expected_images(out: Path) -> dict:
    """Per labelled image of a run, read with pycocotools and pyarrow only (not the export's
    code): its source bytes, its label map (the run's PNG, else its COCO masks rasterised),
    its summary rows, and the categories."""
    run = json.loads((out / "run.json").read_text())
    expected = {}
    for coco_file in sorted((out / "coco").iterdir()):
        coco = json.loads(coco_file.read_text())
        index_of = {c["id"]: i for i, c in enumerate(coco["categories"])}
        for image in coco["images"]:
            if "label_file" in image:
                labels_hw = np.asarray(Image.open(out / image["label_file"]))
            else:
                anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
                size = (image["height"], image["width"])
                labels_hw = decode_label_map(anns, size, index_of)
            expected[image["image_id"]] = {
                "bytes": read_bytes(image["file_name"]),
                "labels": labels_hw,
                "categories": coco["categories"],
            }
    summary = pq.read_table(out / "summary").to_pylist()
    for row in summary:
        expected[row["image_id"]].setdefault("summary", []).append(row)
    assert run["state"] == "finished"
    return {k: v for k, v in expected.items() if "summary" in v}


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def mean_confidence(rows: list[dict]) -> float:
    weight = sum(r["pixel_fraction"] for r in rows)
    return sum(r["pixel_fraction"] * r["mean_confidence"] for r in rows) / weight
