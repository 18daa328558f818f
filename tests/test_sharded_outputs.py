"""The sharded layout: Parquet datasets and COCO files per shard, equal to the merged file;
merging on demand; a dry run; a ledger that resumes in a few reads."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from test_pipeline_local import config_for, ledger_of, make_dataset

import schemas
from jobs import merge as merge_job
from pipeline import InputError, LocalBackend, prepare_run, run_labelling
from pipeline.formats.coco import annotation_mask
from pipeline.formats.ledger import Ledger
from pipeline.formats.storage import Storage

ROOT = Path(__file__).resolve().parents[1]


def test_the_sharded_outputs_hold_what_the_merged_file_holds(tmp_path):
    root = make_dataset(tmp_path, count=8, broken=(6,))
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    out = root / "out"
    merged = json.loads((out / "annotations.json").read_text())
    images = {im["id"]: im for im in merged["images"]}
    table = ds.dataset(out / "annotations", format="parquet").to_table()  # one table
    assert table.num_rows == len(merged["annotations"]) == 14
    rows = {(r["image_id"], r["category_id"]): r for r in table.to_pylist()}
    for ann in merged["annotations"]:
        image = images[ann["image_id"]]
        row = rows[(image["image_id"], ann["category_id"])]
        schemas.validate(row, "annotation_row")
        assert row["counts"] == ann["segmentation"]["counts"]
        assert (row["area"], row["bbox"], row["score"]) == (ann["area"], ann["bbox"], ann["score"])
        assert (row["height"], row["width"], row["uri"]) == (
            image["height"],
            image["width"],
            image["file_name"],
        )
        assert row["category"] == {1: "dark", 2: "bright"}[ann["category_id"]]
        mask = annotation_mask(
            {"segmentation": {"size": [row["height"], row["width"]], "counts": row["counts"]}},
            (row["height"], row["width"]),
        )
        assert int(mask.sum()) == row["area"]  # the RLE decodes to the mask it measures
    # the COCO shard files, concatenated, are the merged file (annotation ids apart)
    shard_images, shard_annotations = [], []
    for path in sorted((out / "coco").iterdir()):
        coco = json.loads(path.read_text())
        assert coco["info"] == merged["info"] and coco["categories"] == merged["categories"]
        shard_images += coco["images"]
        shard_annotations += [
            {k: v for k, v in a.items() if k != "id"} for a in coco["annotations"]
        ]
    assert shard_images == merged["images"]
    assert shard_annotations == [
        {k: v for k, v in a.items() if k != "id"} for a in merged["annotations"]
    ]
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    markers = [json.loads(p.read_text()) for p in sorted((out / "shards").iterdir())]
    assert failures == [f for m in markers for f in m["failures"]] and len(failures) == 1
    summary = pq.read_table(out / "summary")
    assert summary.num_rows == 14 and summary.schema.field("image_id").type == "string"


def test_duckdb_reads_the_annotations_as_one_table(tmp_path):
    duckdb = pytest.importorskip("duckdb")
    root = make_dataset(tmp_path, count=8)
    run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))
    query = (
        "SELECT category, count(*) AS masks, sum(area) AS pixels "
        f"FROM '{root}/out/annotations/*.parquet' GROUP BY category ORDER BY category"
    )
    merged = json.loads((root / "out" / "annotations.json").read_text())
    expected = {}
    for ann in merged["annotations"]:
        name = {1: "dark", 2: "bright"}[ann["category_id"]]
        masks, pixels = expected.get(name, (0, 0))
        expected[name] = (masks + 1, pixels + ann["area"])
    assert {c: (m, p) for c, m, p in duckdb.sql(query).fetchall()} == expected


def test_large_runs_are_not_merged_and_merge_on_demand(tmp_path, capsys):
    root = make_dataset(tmp_path, count=7)
    run_labelling(config_for(root, output=str(root / "small")), LocalBackend(BrightnessSegmenter()))
    summary = run_labelling(config_for(root, merge_limit=5), LocalBackend(BrightnessSegmenter()))
    out = root / "out"
    assert not summary.merged and not (out / "annotations.json").exists()
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["merged"] is False and run["counts"]["annotations"] == 14
    assert merge_job.main([str(out)]) == 0
    assert "7 images, 14 annotations from 3 shards" in capsys.readouterr().out
    small = root / "small"
    assert (out / "annotations.json").read_bytes() == (small / "annotations.json").read_bytes()
    assert (out / "failures.jsonl").read_bytes() == (small / "failures.jsonl").read_bytes()
    # a rerun with nothing to do keeps the merge made on demand ...
    again = run_labelling(config_for(root, merge_limit=5), LocalBackend(BrightnessSegmenter()))
    assert again.complete_before and (out / "annotations.json").exists()
    # ... and a merged file of an earlier, smaller run is removed once the run outgrows it
    make_dataset(tmp_path, count=9)
    assert run_labelling(config_for(root, merge_limit=5), LocalBackend(BrightnessSegmenter())).ok
    assert not (out / "annotations.json").exists()
    assert merge_job.main([str(root / "nothing")]) == 2


def test_a_dry_run_plans_without_ray_torch_or_writes(tmp_path):
    root = make_dataset(tmp_path, count=7)
    code = (
        "import sys; from jobs.label import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'imported'; "
        "sys.exit(code)"
    )
    args = ["--manifest", str(root / "m.parquet"), "--vocabulary", str(root / "vocab.txt")]
    args += ["--output", str(root / "out"), "--shard-size", "3", "--model", "demo"]
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "7 images in 1 file(s)" in result.stdout
    assert "plan: 3 shards (0 kept from the previous plan, 0 done), 7 images" in result.stdout
    assert "annotations/shard-NNNNNN.parquet" in result.stdout and "estimated size" in result.stdout
    assert not (root / "out").exists()


def test_the_ledger_resumes_in_a_few_reads(tmp_path, monkeypatch):
    root = make_dataset(tmp_path, count=60)
    config = config_for(root, shard_size=1)
    assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
    assert [p.name for p in (root / "out" / "ledger").iterdir()] == ["state-000002.parquet"]
    reads = []
    real_read = Storage.read
    monkeypatch.setattr(
        Storage, "read", lambda self, rel: reads.append(rel) or real_read(self, rel)
    )
    run = prepare_run(config)
    assert run.done == 60 and len(run.plan.shards) == 60
    assert reads == ["run.json", "ledger/state-000002.parquet"]  # however many shards


def test_ledger_segments_compaction_and_stale_files(tmp_path):
    storage = Storage(str(tmp_path))
    root = make_dataset(tmp_path / "data", count=5)
    run_labelling(config_for(root, shard_size=1), LocalBackend(BrightnessSegmenter()))
    entries = ledger_of(root / "out")
    ledger = Ledger(storage, flush_s=0, segments_per_state=2)
    ledger.compact(entries)
    for index in range(5):  # one segment a write; a third segment is a compaction instead
        ledger.write(dataclasses.replace(entries[index], attempts=10 + index))
    names = sorted(p.name for p in (tmp_path / "ledger").iterdir())
    # state 1, segments 1-1 and 1-2, then state 2 (the third flush compacts), segments 2-1, 2-2
    assert names == [
        "segment-000002-000001.jsonl",
        "segment-000002-000002.jsonl",
        "state-000002.parquet",
    ]
    (tmp_path / "ledger" / "segment-000001-000009.jsonl").write_text("garbage")  # stale: ignored
    again = Ledger(storage).read()
    assert [again[i].attempts for i in range(5)] == [10, 11, 12, 13, 14]
    for entry in again.values():
        schemas.validate(dataclasses.asdict(entry), "ledger_entry")


def test_a_grown_manifest_labels_only_its_new_rows_and_a_changed_one_is_refused(tmp_path):
    root = make_dataset(tmp_path, count=5)  # shards of 3: rows 0-2 and 3-4
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    make_dataset(tmp_path, count=8)  # the same first five rows, three appended
    segmenter = BrightnessSegmenter()
    summary = run_labelling(config_for(root), LocalBackend(segmenter))
    assert summary.ok and summary.images_labelled == 8 and segmenter.calls == 1  # rows 5-7
    assert summary.shards == 3  # the short shard is kept as it was: rows 3-4
    clean = run_labelling(
        config_for(root, output=str(root / "clean")), LocalBackend(BrightnessSegmenter())
    )
    assert clean.shards == 3  # rows 0-2, 3-5, 6-7: other shards, the same labels and ids
    merged = (root / "out" / "annotations.json").read_bytes()
    assert merged == (root / "clean" / "annotations.json").read_bytes()
    table = pq.read_table(root / "m.parquet").to_pydict()
    table["image_id"][1] = "renamed"
    pq.write_table(pa.table(table), root / "m.parquet")
    with pytest.raises(InputError, match="finished shard.*shard-000000"):
        run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))


def test_merge_for_a_labelling_tool_names_images_by_their_ids(tmp_path):
    """CVAT matches annotations to a task's images by relative path: ``--file-names image_id``
    writes a second COCO file whose ``file_name`` is the id; all else equal."""
    root = make_dataset(tmp_path, count=5)
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    out = root / "out"
    args = [str(out), "--file-names", "image_id", "--name", "tools/cvat.json"]
    assert merge_job.main(args) == 0
    merged = json.loads((out / "annotations.json").read_text())
    for_tool = json.loads((out / "tools" / "cvat.json").read_text())
    schemas.validate(for_tool, "annotations")
    assert [im["file_name"] for im in for_tool["images"]] == ["im0", "im1", "im2", "img/3", "im4"]
    assert [{**im, "file_name": 0} for im in for_tool["images"]] == [
        {**im, "file_name": 0} for im in merged["images"]
    ]
    assert for_tool["annotations"] == merged["annotations"]
    assert for_tool["categories"] == merged["categories"]
