"""Weights on S3 (a moto server): fetched once per node into a cache, verified, then loaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from test_pipeline_local import make_dataset

import gclip
from pipeline import InputError, LocalBackend, load_run_config, run_labelling
from pipeline.formats.checkpoints import fetch_file, file_digest, localize, shipped_settings

pytestmark = pytest.mark.slow


def put(fs, key: str, data: bytes) -> None:
    with fs.open_output_stream(key) as stream:
        stream.write(data)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("GCLIP_LABEL_CACHE", str(folder))
    return folder


def test_a_checkpoint_is_fetched_once_and_refetched_when_it_changes(s3_env, cache):
    fs = s3_env
    put(fs, "data/models/vit.pt", b"weights v1")
    first = fetch_file("s3://data/models/vit.pt")
    assert first.read_bytes() == b"weights v1" and cache in first.parents
    stamp = first.stat().st_mtime_ns
    assert fetch_file("s3://data/models/vit.pt") == first and first.stat().st_mtime_ns == stamp
    put(fs, "data/models/vit.pt", b"weights v2, longer")
    second = fetch_file("s3://data/models/vit.pt")
    assert second != first and second.read_bytes() == b"weights v2, longer"
    assert localize("ViT-B-16", "s3://data/models/vit.pt") == ("ViT-B-16", str(second))
    with pytest.raises(InputError, match="does not exist"):
        fetch_file("s3://data/models/missing.pt")


def test_a_checkpoint_is_verified_against_its_sha256_sidecar(s3_env, cache):
    fs = s3_env
    put(fs, "data/models/good.pt", b"good weights")
    put(fs, "data/models/good.pt.sha256", hashlib.sha256(b"good weights").hexdigest().encode())
    assert fetch_file("s3://data/models/good.pt").read_bytes() == b"good weights"
    put(fs, "data/models/bad.pt", b"tampered weights")
    put(fs, "data/models/bad.pt.sha256", hashlib.sha256(b"other").hexdigest().encode() + b"  x")
    with pytest.raises(InputError, match="does not match"):
        fetch_file("s3://data/models/bad.pt")
    assert not list(cache.rglob("bad.pt"))  # nothing unverified is left in the cache


def test_file_digest_is_remembered_until_the_file_changes(tmp_path, cache):
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    assert file_digest(path) == hashlib.sha256(b"abc").hexdigest()
    path.write_bytes(b"abcd")
    assert file_digest(path) == hashlib.sha256(b"abcd").hexdigest()


def test_a_model_folder_on_s3_labels_like_the_local_one(s3_env, cache, tmp_path):
    """--model local-dir:s3://... : settings read by the driver, weights fetched by workers."""
    fs = s3_env
    for file in gclip.catalog.DEMO_DIR.iterdir():
        put(fs, f"data/models/demo/{file.name}", file.read_bytes())
    remote = "local-dir:s3://data/models/demo"
    assert shipped_settings(remote) == shipped_settings("demo")
    root = make_dataset(tmp_path, count=3)
    outputs = []
    for name, model in (("local", "demo"), ("remote", remote)):
        values = {
            "manifest": str(root / "m.parquet"),
            "vocabulary": str(root / "vocab.txt"),
            "output": str(root / name),
            "model": model,
            "inference": {"short_side": 32},
        }
        assert run_labelling(load_run_config(values, {}, shipped_settings), LocalBackend()).ok
        run = json.loads((root / name / "run.json").read_text())
        outputs.append((run["resolved"], (root / name / "annotations.json").read_bytes()))
    assert outputs[0][0] == outputs[1][0]  # same weights digest, blocks and depth
    assert outputs[0][1].split(b'"images"')[1] == outputs[1][1].split(b'"images"')[1]
    weights = Path(gclip.catalog.DEMO_DIR / "open_clip_model.safetensors")
    assert (
        outputs[1][0]["model"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
