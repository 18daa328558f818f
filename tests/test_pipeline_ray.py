"""The pipeline on a local Ray: end to end, killing the driver, killing a worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from fakes import Slowed
from test_job_failures import demo_args
from test_pipeline_local import assert_same_outputs, ledger_of

from pipeline import LocalBackend, RayBackend, RunConfig, load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"


def demo_config(output, **flags) -> RunConfig:
    """The demo model under its shipped settings, with the driver test's scale."""
    values = {
        "manifest": str(DEMO / "manifest.parquet"),
        "vocabulary": str(DEMO / "vocabulary.txt"),
        "output": str(output),
        "model": "demo",
        "shard_size": 3,
        "inference": {"short_side": 64, "crop": 64, "stride": 32},
        **flags,
    }
    return load_run_config(None, values, shipped_settings)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """The output folder of an uninterrupted in-process run."""
    out = tmp_path_factory.mktemp("clean")
    assert run_labelling(demo_config(out), LocalBackend()).ok
    return out


def test_ray_run_equals_in_process_run(ray_local, tmp_path, clean_run):
    assert run_labelling(demo_config(tmp_path, num_workers=2), RayBackend()).ok
    assert_same_outputs(tmp_path, clean_run)


def test_a_peer_is_resolved_in_a_ray_task_and_runs(ray_local, tmp_path):
    summary = run_labelling(demo_config(tmp_path, method="clearclip"), RayBackend())
    assert summary.ok and summary.images_labelled == 16
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["resolved"]["method"]["name"] == "clearclip"
    assert run["resolved"]["model"]["depth"] == 6


class KillingBackend(RayBackend):
    """Kills the worker's process soon after shard 2 is submitted. Its model takes a second
    more per call, so the kill finds it labelling a shard (with the stages overlapping, a fast
    model could otherwise be caught between shards, and nothing would be lost to retry)."""

    def __init__(self, ray):
        super().__init__()
        self.ray, self.killed = ray, []

    def executor(self, config, spec, settings):
        executor = super().executor(config, Slowed(spec, 1.0), settings)
        pid = self.ray.get(executor.actors[0].pid.remote())
        submit = executor.submit

        def submit_then_kill(task):
            submit(task)
            if task.shard.index == 2 and not self.killed:
                time.sleep(0.5)
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)

        executor.submit = submit_then_kill
        return executor


def test_killed_worker_is_retried(ray_local, tmp_path, clean_run):
    backend = KillingBackend(ray_local)
    summary = run_labelling(demo_config(tmp_path), backend)
    assert backend.killed and summary.ok and summary.retries == {"died": 1}
    attempts = {e.attempts for e in ledger_of(tmp_path).values()}
    assert 2 in attempts  # at least one shard needed a second attempt
    assert_same_outputs(tmp_path, clean_run)


def job_command(output) -> list[str]:
    """``python -m jobs.label`` on the demo data, at the driver tests' scale."""
    scale = ["--shard-size", "3", "--crop", "64", "--stride", "32"]
    return [sys.executable, "-m", "jobs.label", *demo_args(output, *scale)]


def kill_mid_run(command, finished) -> None:
    """Start the job, wait until ``finished()`` says a shard is done, then kill -9 the driver
    and the embedded Ray it started."""
    driver = subprocess.Popen(
        command,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not finished():
        time.sleep(0.05)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()


def test_driver_killed_then_resumed_equals_clean(tmp_path, clean_run):
    out = tmp_path / "out"
    command = job_command(out)
    kill_mid_run(command, lambda: (out / "shards" / "shard-000001.json").exists())
    markers = [p for p in (out / "shards").iterdir() if not p.name.startswith(".tmp-")]
    finished = sorted(p.name for p in markers)
    assert finished and len(finished) < 6, "the kill should land mid-run"
    stamps = {p.name: p.stat().st_mtime_ns for p in markers}
    # The resumed driver also proves that a driver never imports torch: the model is
    # resolved in a Ray task and built in the actors.
    no_torch = (
        "import sys; from jobs.label import main; code = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'the driver imported torch'; sys.exit(code)"
    )
    resumed = [sys.executable, "-c", no_torch, *command[3:]]
    result = subprocess.run(resumed, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_same_outputs(out, clean_run)
    for name, stamp in stamps.items():
        assert (out / "shards" / name).stat().st_mtime_ns == stamp  # finished shards not rewritten


def test_driver_killed_then_resumed_on_s3_equals_clean(s3_env, tmp_path, clean_run):
    fs, prefix = s3_env, "labels/killed"

    def marker_exists() -> bool:
        return fs.get_file_info(f"{prefix}/shards/shard-000001.json").is_file

    command = job_command(f"s3://{prefix}")
    kill_mid_run(command, marker_exists)
    listed = fs.get_file_info(pafs.FileSelector(f"{prefix}/shards"))
    # A write the kill interrupted may leave a temporary beside the markers (and a delete
    # already in flight may remove it a moment later); readers skip temporaries, so do we.
    markers = [i for i in listed if not i.base_name.startswith(".tmp-")]
    assert markers and len(markers) < 6, "the kill should land mid-run"
    stamps = {i.path: i.mtime_ns for i in markers}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    local = tmp_path / "copy"  # the S3 output, copied down to compare file by file
    for info in fs.get_file_info(pafs.FileSelector(prefix, recursive=True)):
        if info.is_file:
            target = local / info.path.removeprefix(prefix + "/")
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as stream:
                target.write_bytes(stream.read())
    assert_same_outputs(local, clean_run)
    for path, stamp in stamps.items():
        assert fs.get_file_info(path).mtime_ns == stamp  # finished shards not rewritten


def doubled_manifest(folder: Path) -> Path:
    """The demo manifest twice over (the copies under ids of their own), absolute uris."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(DEMO / "manifest.parquet").select(["image_id", "uri"])
    uris = [str(DEMO / u) for u in table["uri"].to_pylist()]
    ids = table["image_id"].to_pylist()
    doubled = pa.table({"image_id": ids + [f"{i}_again" for i in ids], "uri": uris + uris})
    pq.write_table(doubled, folder / "doubled.parquet")
    return folder / "doubled.parquet"


def test_sigterm_on_ray_ends_interrupted_and_resumes_to_a_clean_run(tmp_path):
    """As `ray job stop` does: before, Ray's own SIGTERM handler made it exit 1, 'failed'."""
    out = tmp_path / "out"
    # 32 shards of one image: when the signal lands, some are still queued (at most 3 calls
    # of 8 are in flight on the one worker, and finish first), so the run must stop rather
    # than run out of work.
    manifest = doubled_manifest(tmp_path)
    command = [*job_command(out), "--shard-size", "1", "--manifest", str(manifest)]
    clean_run = tmp_path / "clean"
    assert run_labelling(demo_config(clean_run, manifest=str(manifest)), LocalBackend()).ok
    driver = subprocess.Popen(
        command, cwd=ROOT, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "shards" / "shard-000001.json").exists():
        assert driver.poll() is None
        time.sleep(0.05)
    driver.send_signal(signal.SIGTERM)  # the driver only: it ends its embedded Ray itself
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 143, err[-3000:]
    assert "SystemExit" not in err
    run = json.loads((out / "run.json").read_text())
    assert run["state"] == "interrupted"
    assert len(list((out / "shards").glob("shard-*.json"))) < 32  # it stopped mid-run
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    # other shard boundaries than the clean run's: the merged COCO file is what must agree
    assert (out / "annotations.json").read_bytes() == (clean_run / "annotations.json").read_bytes()
