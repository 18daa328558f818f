"""Manifests, images and outputs on a real S3-compatible server (moto's server mode, loopback)."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image

from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.storage import Storage

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    fs = pafs.S3FileSystem(
        endpoint_override=s3_endpoint.removeprefix("http://"),
        scheme="http",
        access_key="x",
        secret_key="x",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("data")
    fs.create_dir("labels")
    return fs


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
    config = RunConfig(
        manifest="s3://data/manifests/",
        vocabulary=str(tmp_path / "v.txt"),
        output="s3://labels/run1",
        shard_size=2,
        png_labels=True,
    )
    summary = run_labelling(config, LocalBackend(BrightnessSegmenter()))
    assert summary.ok and summary.images_labelled == 4 and summary.images_failed == 1
    storage = Storage("s3://labels/run1")
    coco = json.loads(storage.read("annotations.json"))
    assert [im["image_id"] for im in coco["images"]] == [0, 1, 2, 3]
    bright = [a for a in coco["annotations"] if a["category_id"] == 2]
    assert [a["area"] for a in bright] == [16, 24, 32, 40]
    assert storage.exists("labels/3.png") and storage.exists("ledger/shard-000002.json")
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
