"""The job's exit codes and messages, peers on a shallow model, seeded random weights, Ray's
address. The model runs in process here (``LocalBackend``): the same recipe, resolution and
worker code as on Ray, minus the actors."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from fakes import BrightnessSegmenter
from test_pipeline_local import job_args, make_dataset

import gclip
from jobs import label as label_job
from pipeline import LocalBackend

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"


@pytest.fixture
def in_process(monkeypatch):
    """``jobs.label`` with its Ray backend replaced by the in-process one (real model)."""
    monkeypatch.setattr(label_job, "RayBackend", lambda address: LocalBackend())


def demo_args(output, *extra):
    return [
        "--manifest",
        str(DEMO / "manifest.parquet"),
        "--vocabulary",
        str(DEMO / "vocabulary.txt"),
        "--output",
        str(output),
        "--model",
        "demo",
        "--short-side",
        "64",
        *extra,
    ]


@pytest.mark.parametrize("method", ["clearclip", "naclip", "sclip", "maskclip", "clip"])
def test_every_peer_runs_through_the_job_on_a_shallow_model(in_process, tmp_path, method):
    """Before: every peer failed on the 6-block demo model, asking for calibration images
    that only gclip was given."""
    assert label_job.main(demo_args(tmp_path, "--method", method)) == 0
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["resolved"]["method"]["name"] == method
    assert run["resolved"]["method"]["global_blocks"] == []
    assert run["counts"]["images_labelled"] == 16


def test_a_missing_checkpoint_exits_2_at_once_naming_it(monkeypatch, tmp_path, capsys):
    def no_ray(address):
        raise AssertionError("Ray must not start for bad input")

    monkeypatch.setattr(label_job, "RayBackend", no_ray)
    root = make_dataset(tmp_path)
    start = time.monotonic()
    code = label_job.main(
        [*job_args(root), "--model", "ViT-B-16", "--pretrained", "/models/nowhere/vit-b-16.pt"]
    )
    assert code == 2 and time.monotonic() - start < 10
    assert "/models/nowhere/vit-b-16.pt does not exist" in capsys.readouterr().err
    assert label_job.main(demo_args(tmp_path / "o", "--model", "ViT-B-61")) == 2
    assert "Unknown open_clip model 'ViT-B-61'. Close names: ViT-B-16" in capsys.readouterr().err


def test_a_corrupt_checkpoint_fails_the_run_naming_it(in_process, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(gclip.catalog.DEMO_DIR, model)
    weights = model / "open_clip_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])  # truncated
    out = tmp_path / "out"
    assert label_job.main(demo_args(out, "--model", f"local-dir:{model}")) == 1
    err = capsys.readouterr().err
    assert "the model could not be built: CheckpointError" in err and str(model) in err
    run = json.loads((out / "run.json").read_text())
    assert run["state"] == "failed" and "CheckpointError" in run["error"]
    assert run["fingerprint"] is None and not (out / "ledger").exists()


def test_a_crash_during_the_run_exits_1_with_its_traceback(monkeypatch, tmp_path, capsys):
    """Before: any ValueError or OSError raised anywhere in a run was exit 2, "invalid input",
    without a traceback, and run.json stayed "running"."""
    monkeypatch.setattr(
        label_job, "RayBackend", lambda address: LocalBackend(BrightnessSegmenter())
    )

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.running.coordinator.merge", full_disk)
    root = make_dataset(tmp_path)
    assert label_job.main(job_args(root)) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "No space left on device" in err
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["state"] == "failed" and run["error"].startswith("OSError: [Errno 28]")
    assert "full_disk" in run["traceback"]


def test_random_weights_are_the_same_in_every_process_and_run(in_process, tmp_path):
    """Before: --pretrained none built another model in every worker and every run."""
    with pytest.warns(UserWarning, match="RANDOM weights"):
        torch.manual_seed(123)  # the global generator must not matter
        a = gclip.load_model("ViT-S-32", "none")
        torch.manual_seed(456)
        b = gclip.load_model("ViT-S-32", "none")
    assert a.seed == b.seed == gclip.loading.random_weights_seed("ViT-S-32")
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
    root = make_dataset(tmp_path, count=4)
    outputs = []
    for run in ("one", "two"):
        out = root / run
        args = [
            *job_args(root, run),
            *("--model", "ViT-S-32", "--pretrained", "none"),
            *("--short-side", "32", "--crop", "32", "--stride", "32"),
        ]
        with pytest.warns(UserWarning, match="RANDOM weights"):
            assert label_job.main(args) == 0
        outputs.append((out / "annotations.json").read_bytes())
        assert json.loads((out / "run.json").read_text())["resolved"]["model"]["random_seed"]
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize(
    ("address", "env", "expected"),
    [(None, None, "local"), ("auto", None, "auto"), (None, "ray://head:10001", "ray://head:10001")],
)
def test_ray_starts_an_embedded_instance_unless_told_to_join(monkeypatch, address, env, expected):
    """Before: ray.init() silently joined a cluster an earlier `ray start` left behind."""
    import ray

    from pipeline.running.ray_session import connect

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert connect(address) is True
    assert calls[0]["address"] == expected
