"""Manifests, images and outputs on a real S3-compatible server (moto's server mode, loopback)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image

from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.formats.storage import Storage

pytestmark = pytest.mark.slow


def test_labelling_from_and_to_s3(s3_env, tmp_path):
    fs = s3_env
    ids, uris = [], []
    for i in range(5):
        array = np.zeros((8, 10, 3), np.uint8)
        array[:, : i + 2] = 255
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        with fs.open_output_stream(f"data/images/{i}.png") as stream:
            stream.write(buffer.getvalue())
        ids.append(i)
        uris.append(f"s3://data/images/{i}.png")
    uris[4] = "s3://data/images/missing.png"
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), buffer)
    with fs.open_output_stream("data/manifests/part-0.parquet") as stream:
        stream.write(buffer.getvalue())
    (tmp_path / "v.txt").write_text("dark\nbright\n")
    config = RunConfig.from_settings(
        manifest="s3://data/manifests/",
        vocabulary=str(tmp_path / "v.txt"),
        output="s3://labels/run1",
        shard_size=2,
        png_labels=True,
        pretrained="none",
    )
    summary = run_labelling(config, LocalBackend(BrightnessSegmenter()))
    assert summary.ok and summary.images_labelled == 4 and summary.images_failed == 1
    storage = Storage("s3://labels/run1")
    coco = json.loads(storage.read("annotations.json"))
    assert [im["image_id"] for im in coco["images"]] == [0, 1, 2, 3]
    bright = [a for a in coco["annotations"] if a["category_id"] == 2]
    assert [a["area"] for a in bright] == [16, 24, 32, 40]
    assert storage.exists("labels/3.png") and storage.exists("shards/shard-000002.json")
    assert storage.exists("annotations/shard-000002.parquet") and storage.list("ledger")
    failure = json.loads(storage.read("failures.jsonl"))
    assert failure["image_id"] == 4 and failure["uri"].endswith("missing.png")
    # resume on S3: nothing left to do, same bytes
    before = storage.read("annotations.json")
    segmenter = BrightnessSegmenter()
    run_labelling(config, LocalBackend(segmenter))
    assert segmenter.calls == 0 and storage.read("annotations.json") == before


def test_s3_writes_are_atomic(s3_env):
    from test_storage import check_atomic

    storage = Storage("s3://labels/atomic")
    check_atomic(storage)
    leftovers = [
        i.path
        for i in s3_env.get_file_info(pafs.FileSelector("labels/atomic", recursive=True))
        if ".tmp-" in i.path
    ]
    assert leftovers == []
