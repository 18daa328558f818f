"""The coordinator and worker in process with a fake segmenter: outputs, failures, resume."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image
from pycocotools.coco import COCO

import schemas
from gclip import InferenceConfig, MethodConfig
from pipeline import ConfigChangedError, LocalBackend, RunConfig, run_labelling
from pipeline.formats.coco import decode_label_map
from pipeline.formats.layout import label_file_name
from pipeline.formats.ledger import Ledger
from pipeline.formats.storage import Storage


def make_dataset(root, count=7, broken=()):
    """PNG images split bright/dark by column, plus a manifest; ``broken`` rows get bad files."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    ids, uris = [], []
    for i in range(count):
        array = np.zeros((10 + i, 12, 3), np.uint8)
        array[:, : 3 + i % 5] = 250
        path = root / "img" / f"{i}.png"
        if i in broken:
            path.write_bytes(b"" if i % 2 else b"garbage bytes")
        else:
            Image.fromarray(array).save(path)
        ids.append(f"img/{i}" if i == 3 else f"im{i}")  # one id is a nested path
        uris.append(str(path))
    pq.write_table(
        pa.table({"image_id": ids, "uri": uris, "source": ["x"] * count}), root / "m.parquet"
    )
    (root / "vocab.txt").write_text("dark, shadow\nbright\n")
    return root


def job_args(root, output="out"):
    """``jobs.label`` flags for the dataset under ``root``."""
    manifest, vocabulary = str(root / "m.parquet"), str(root / "vocab.txt")
    return [
        *("--manifest", manifest, "--vocabulary", vocabulary, "--output", str(root / output)),
        *("--pretrained", "none"),  # stand-in segmenters: no weights to check
    ]


def config_for(root, **kw):
    values = {
        "manifest": str(root / "m.parquet"),
        "vocabulary": str(root / "vocab.txt"),
        "output": str(root / "out"),
        "shard_size": 3,
        "pretrained": "none",  # stand-in segmenters: no weights to check
        **kw,
    }
    return RunConfig.from_settings(**values)


def fake_backend(segmenter=None):
    return LocalBackend(segmenter or BrightnessSegmenter())


def assert_same_outputs(out, clean):
    """Two runs' labels are equal: COCO files and markers byte for byte, Parquet datasets
    row for row, and the merged file if both have one."""
    for folder in ("coco", "shards"):
        names = sorted(p.name for p in (clean / folder).iterdir())
        assert sorted(p.name for p in (out / folder).iterdir()) == names
        for name in names:
            assert (out / folder / name).read_bytes() == (clean / folder / name).read_bytes(), name
    for folder in ("annotations", "summary"):
        assert pq.read_table(out / folder).equals(pq.read_table(clean / folder)), folder
    if (clean / "annotations.json").exists():
        assert (out / "annotations.json").read_bytes() == (clean / "annotations.json").read_bytes()


def ledger_of(out):
    """The ledger's entries of an output folder, by shard."""
    return Ledger(Storage(str(out))).read()


def test_outputs_decode_to_the_labels_and_validate(tmp_path):
    root = make_dataset(tmp_path, broken=(5,))
    summary = run_labelling(config_for(root, png_labels=True), fake_backend())
    assert (
        summary.ok
        and summary.shards == 3
        and summary.images_labelled == 6
        and summary.images_failed == 1
    )
    out = root / "out"
    coco_data = json.loads((out / "annotations.json").read_text())
    schemas.validate(coco_data, "annotations")
    assert (
        coco_data["info"]["method"] == "gclip" and len(coco_data["info"]["vocabulary_sha256"]) == 64
    )
    coco = COCO(str(out / "annotations.json"))
    for image in coco_data["images"]:
        i = int(image["file_name"].rsplit("/", 1)[1].split(".")[0])
        expected = np.zeros((10 + i, 12), np.uint8)
        expected[:, : 3 + i % 5] = 1
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        labels = decode_label_map(anns, (image["height"], image["width"]), {1: 0, 2: 1})
        np.testing.assert_array_equal(labels, expected)
        png = np.asarray(Image.open(out / image["label_file"]))
        np.testing.assert_array_equal(png, expected)
        assert image["image_id"] == (f"img/{i}" if i == 3 else f"im{i}")
    # label maps keep the id's path (``img/3`` -> ``labels/img/3.png``)
    assert label_file_name("img/3") == "img/3.png" and (out / "labels" / "img" / "3.png").exists()
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failures == [
        {
            "image_id": "im5",
            "uri": str(root / "img" / "5.png"),
            "error": "ImageDecodeError",
            "message": "the file is empty",
        }
    ]
    for failure in failures:
        schemas.validate(failure, "failure")
    run = json.loads((out / "run.json").read_text())
    schemas.validate(run, "run")
    assert run["state"] == "finished" and run["counts"]["images_failed"] == 1
    assert run["counts"]["merged"] and run["counts"]["annotations"] == 12
    for shard_file in sorted((out / "shards").iterdir()):
        schemas.validate(json.loads(shard_file.read_text()), "shard")
    for coco_file in sorted((out / "coco").iterdir()):
        schemas.validate(json.loads(coco_file.read_text()), "annotations")
        COCO(str(coco_file))  # each shard's file loads on its own
    for entry in ledger_of(out).values():
        schemas.validate(dataclasses.asdict(entry), "ledger_entry")
    summary_table = pq.read_table(out / "summary").to_pylist()
    for row in summary_table:
        schemas.validate(row, "summary_row")
    first = [r for r in summary_table if r["image_id"] == "im0"]
    assert {r["category"] for r in first} == {"dark", "bright"}
    assert sum(r["pixel_fraction"] for r in first) == pytest.approx(1.0)


def test_resume_skips_finished_shards_and_rewrites_nothing(tmp_path):
    root = make_dataset(tmp_path)
    config = config_for(root)
    run_labelling(config, fake_backend())
    out = root / "out"
    first = (out / "annotations.json").read_bytes()
    files = [p for p in out.rglob("*.*") if p.parent.name in ("shards", "coco", "annotations")]
    stamps = {p: p.stat().st_mtime_ns for p in files}
    # A crash between shard 1's marker and its ledger entry: the entry says pending.
    ledger = Ledger(Storage(str(out)))
    entries = ledger.read()
    ledger.compact({**entries, 1: dataclasses.replace(entries[1], state="pending")})
    (out / "shards" / "shard-000002.json").unlink()  # a shard that never finished
    segmenter = BrightnessSegmenter()
    run_labelling(config, fake_backend(segmenter))
    assert segmenter.calls == 1  # only shard 2 (one chunk) ran again
    assert ledger_of(out)[1].state == "done" and ledger_of(out)[1].images_done == 3
    assert (out / "annotations.json").read_bytes() == first
    for path, stamp in stamps.items():
        if "shard-000002" not in path.name:
            assert path.stat().st_mtime_ns == stamp


def test_changed_settings_are_refused_unless_asked(tmp_path):
    root = make_dataset(tmp_path)
    run_labelling(config_for(root), fake_backend())
    with pytest.raises(ConfigChangedError, match="--allow-config-change"):
        run_labelling(config_for(root, method=MethodConfig(name="clearclip")), fake_backend())
    (root / "vocab.txt").write_text("dark\nbright\nmedium\n")
    with pytest.raises(ConfigChangedError):
        run_labelling(config_for(root), fake_backend())
    run_labelling(config_for(root), fake_backend(), allow_config_change=True)
    # batch size changes no label: resuming with another one is fine
    run_labelling(
        config_for(root, inference=InferenceConfig(batch_size=3)),
        fake_backend(),
        allow_config_change=False,
    )


def test_a_bug_fails_the_shard_with_its_traceback(tmp_path):
    root = make_dataset(tmp_path)
    summary = run_labelling(config_for(root), fake_backend(BrightnessSegmenter(always_fail=True)))
    assert not summary.ok and summary.shards_failed == 3
    entry = ledger_of(root / "out")[0]
    assert entry.state == "failed" and "ZeroDivisionError" in entry.traceback
    assert json.loads((root / "out" / "run.json").read_text())["state"] == "failed"
    # the next run retries failed shards and, with the bug fixed, finishes
    assert run_labelling(config_for(root), fake_backend()).ok


def test_one_image_failing_in_the_model_is_isolated(tmp_path):
    root = make_dataset(tmp_path)
    summary = run_labelling(config_for(root), fake_backend(BrightnessSegmenter(fail_on_width=12)))
    # every image is 12 wide here, so every model call fails: that is a bug, shards fail
    assert summary.shards_failed == 3 and summary.retries == {}
    root2 = make_dataset(tmp_path / "b")
    img = root2 / "img" / "4.png"
    Image.fromarray(np.zeros((5, 30, 3), np.uint8)).save(img)
    summary = run_labelling(config_for(root2), fake_backend(BrightnessSegmenter(fail_on_width=30)))
    assert summary.ok and summary.images_failed == 1 and summary.images_labelled == 6
    failure = json.loads((root2 / "out" / "failures.jsonl").read_text())
    assert failure["image_id"] == "im4" and failure["error"] == "ValueError"


def test_atomic_writes_leave_no_temporaries(tmp_path):
    root = make_dataset(tmp_path)
    run_labelling(config_for(root, png_labels=True), fake_backend())
    leftovers = [p for p in (root / "out").rglob("*") if p.name.startswith(".tmp-")]
    assert leftovers == []
    assert sorted(os.listdir(root / "out" / "shards")) == [f"shard-{i:06d}.json" for i in range(3)]


def test_auto_global_blocks_calibrate_on_the_manifests_first_images(tmp_path):
    """Workers agree on the fused blocks: the recipe is resolved once, on the same images."""
    from pipeline import prepare_run
    from pipeline.planning.manifest import first_uris, open_manifest
    from pipeline.running.recipe import SegmenterSpec, resolve_recipe

    root = make_dataset(tmp_path, count=5)
    config = config_for(root, model="demo", method=MethodConfig(global_blocks="auto"))
    run = prepare_run(config)
    assert run.calibration_uris == tuple(first_uris(open_manifest(config.manifest), 5))
    assert run.calibration_uris == tuple(str(root / "img" / f"{i}.png") for i in range(5))
    spec = SegmenterSpec("demo", None, config.labelling.method)
    a, b = (resolve_recipe(spec, run.calibration_uris, 64) for _ in range(2))
    blocks = a.spec.method.global_blocks
    assert isinstance(blocks, tuple) and blocks == b.spec.method.global_blocks
    assert a.sources == {
        "method.global_blocks": "calibration",
        "method.cs_start_block": "calibration",
    }
    assert a.spec.method.cs_start_block == blocks[0]
    fixed = config_for(
        root, model="demo", method=MethodConfig(global_blocks=(1, 2)), output=str(root / "o2")
    )
    assert prepare_run(fixed).calibration_uris == ()


def test_out_of_memory_is_retried_then_isolated_on_the_final_attempt(tmp_path):
    """An image too large for memory fails its shard's attempts until the last one, where it
    alone is recorded as failed and the rest of its shard is labelled."""
    root = make_dataset(tmp_path)
    Image.fromarray(np.zeros((5, 30, 3), np.uint8)).save(root / "img" / "4.png")
    segmenter = BrightnessSegmenter(fail_on_width=30, error=MemoryError)
    summary = run_labelling(config_for(root, max_attempts=2), fake_backend(segmenter))
    assert summary.ok and summary.retries == {"oom": 1}
    assert summary.images_failed == 1 and summary.images_labelled == 6
    failure = json.loads((root / "out" / "failures.jsonl").read_text())
    assert failure["image_id"] == "im4" and failure["error"] == "MemoryError"
    entry = ledger_of(root / "out")[1]
    assert entry.attempts == 2 and entry.retries == {"oom": 1} and entry.state == "done"
