"""Transient read errors are retried with backoff; --retry-failed relabels failed images."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from fakes import BrightnessSegmenter
from PIL import Image
from test_pipeline_local import assert_same_outputs, config_for, ledger_of, make_dataset

from pipeline import LocalBackend, run_labelling
from pipeline.formats import storage as storage_module
from pipeline.formats.storage import Backoff, is_transient, read_bytes, retrying

FAST = Backoff(attempts=4, first_s=0.0)


class FlakyFileSystem:
    """Stands in for a pyarrow file system: ``failures`` reads of ``path`` raise ``error``."""

    def __init__(self, data: bytes, failures: int, error: Exception) -> None:
        self.data, self.failures, self.error, self.reads = data, failures, error, 0

    def open_input_stream(self, path):
        self.reads += 1
        if self.reads <= self.failures:
            raise self.error
        return io.BytesIO(self.data)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError("AWS Error NETWORK_CONNECTION during GetObject operation: curlCode: 28"), True),
        (OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your rate"), True),
        (OSError("When reading key: HTTP response code: 503"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (FileNotFoundError("Path does not exist 'bucket/a.jpg'"), False),
        (PermissionError("AWS Error ACCESS_DENIED"), False),
        (OSError("AWS Error NO_SUCH_KEY"), False),
        (ValueError("timeout"), False),  # not an I/O error at all
    ],
)
def test_transient_errors_are_told_apart(error, transient):
    assert is_transient(error) is transient


def test_a_read_is_retried_until_it_succeeds(monkeypatch):
    fs = FlakyFileSystem(b"bytes", failures=3, error=OSError("HTTP response code: 503"))
    monkeypatch.setattr(storage_module, "resolve", lambda uri: (fs, uri))
    assert read_bytes("s3://b/k", FAST) == b"bytes" and fs.reads == 4
    fs = FlakyFileSystem(b"bytes", failures=9, error=OSError("HTTP response code: 503"))
    monkeypatch.setattr(storage_module, "resolve", lambda uri: (fs, uri))
    with pytest.raises(OSError, match="gave up on s3://b/k after 4 tries"):
        read_bytes("s3://b/k", FAST)
    fs = FlakyFileSystem(b"bytes", failures=9, error=FileNotFoundError("no such key"))
    monkeypatch.setattr(storage_module, "resolve", lambda uri: (fs, uri))
    with pytest.raises(FileNotFoundError):
        read_bytes("s3://b/k", FAST)
    assert fs.reads == 1  # a permanent error is not retried


def test_backoff_doubles_with_jitter():
    backoff = Backoff(attempts=5, first_s=0.5, max_s=3.0)
    for retry, base in enumerate([0.5, 1.0, 2.0, 3.0, 3.0]):
        assert 0.75 * base <= backoff.delay(retry) <= 1.25 * base
    calls = []
    assert retrying(lambda: calls.append(1) or len(calls), "x", FAST) == 1


def test_an_image_whose_reads_fail_transiently_is_labelled(tmp_path, monkeypatch):
    """Before: one S3 timeout made the image a permanent failure."""
    root = make_dataset(tmp_path)
    clean = config_for(root, output=str(root / "clean"))
    run_labelling(clean, LocalBackend(BrightnessSegmenter()))
    flaky_uri = str(root / "img" / "2.png")
    real_resolve, reads = storage_module.resolve, []

    def resolve(uri):
        fs, path = real_resolve(uri)
        if uri == flaky_uri and len(reads) < 2:
            reads.append(uri)
            return FlakyFileSystem(b"", 1, OSError("Connection reset by peer")), path
        return fs, path

    monkeypatch.setattr(storage_module, "resolve", resolve)
    monkeypatch.setattr(storage_module, "READ_BACKOFF", FAST)
    summary = run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))
    assert summary.ok and summary.images_failed == 0 and len(reads) == 2
    assert (root / "out" / "annotations.json").read_bytes() == (
        root / "clean" / "annotations.json"
    ).read_bytes()


def test_retry_failed_relabels_just_the_failed_images(tmp_path):
    """A finished run's failed images are relabelled on demand; the shard file is replaced
    and the result equals a run in which those reads had succeeded."""
    root = make_dataset(tmp_path, count=8)
    run_labelling(config_for(root, output=str(root / "clean")), LocalBackend(BrightnessSegmenter()))
    moved = {i: root / f"away-{i}.png" for i in (1, 4, 5)}
    for i, target in moved.items():
        shutil.move(root / "img" / f"{i}.png", target)
    first = run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))
    assert first.ok and first.images_failed == 3
    out = root / "out"
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    for i, target in moved.items():
        shutil.move(target, root / "img" / f"{i}.png")
    again = BrightnessSegmenter()
    plain = run_labelling(config_for(root), LocalBackend(again))
    assert again.calls == 0 and plain.images_failed == 3  # a plain resume redoes nothing
    retried = BrightnessSegmenter()
    summary = run_labelling(config_for(root), LocalBackend(retried), retry_failed=True)
    assert summary.ok and summary.images_failed == 0 and summary.images_labelled == 8
    assert retried.calls == 2  # images 1 (shard 0) and 4, 5 (shard 1): one call per shard
    assert_same_outputs(out, root / "clean")
    assert (out / "failures.jsonl").read_text() == ""
    for name, stamp in stamps.items():
        rewritten = (out / "shards" / name).stat().st_mtime_ns != stamp
        assert rewritten == (name != "shard-000002.json")  # shard 2 had no failure
    entry = ledger_of(out)[1]
    assert entry.state == "done" and entry.images_failed == 0


def test_failures_are_listed_in_row_order(tmp_path):
    """A shard file is the same whichever attempt labelled which image: failures included."""
    root = make_dataset(tmp_path, count=6, broken=(2,))
    image = np.zeros((5, 40, 3), np.uint8)
    Image.fromarray(image).save(root / "img" / "0.png")  # fails inside the model, row 0
    config = config_for(root, shard_size=6, images_per_call=6)
    run_labelling(config, LocalBackend(BrightnessSegmenter(fail_on_width=40)))
    shard = json.loads((root / "out" / "shards" / "shard-000000.json").read_text())
    assert [f["image_id"] for f in shard["failures"]] == ["im0", "im2"]


def test_retry_failed_keeps_an_image_that_fails_again(tmp_path):
    """One image that still fails inside the model is a record again, not a failed shard."""
    root = make_dataset(tmp_path)
    Image.fromarray(np.zeros((5, 30, 3), np.uint8)).save(root / "img" / "4.png")
    segmenter = BrightnessSegmenter(fail_on_width=30)
    assert run_labelling(config_for(root), LocalBackend(segmenter)).images_failed == 1
    before = (root / "out" / "annotations.json").read_bytes()
    summary = run_labelling(config_for(root), LocalBackend(segmenter), retry_failed=True)
    assert summary.ok and summary.images_failed == 1
    assert (root / "out" / "annotations.json").read_bytes() == before
