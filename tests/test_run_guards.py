"""What the driver refuses or says before any work, and how a run ends for its user: each a
regression test of a defect seen on a fresh clone or by a red team."""

from __future__ import annotations

import errno
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import BrightnessSegmenter
from test_pipeline_local import assert_same_outputs, config_for, job_args, make_dataset

import jobs.label as label_job
import jobs.status as status_job
from pipeline import LocalBackend, run_labelling
from pipeline.cli import build_parser
from pipeline.errors import DiskFullError
from pipeline.formats.ledger import Ledger, ShardState
from pipeline.formats.storage import Storage
from pipeline.running import checks
from pipeline.running.lease import LEASE, LeaseInfo, Owner, _now, acquire

ROOT = Path(__file__).resolve().parents[1]


class Unused:
    """A backend that must not be touched (a run with nothing to do starts nothing)."""

    def resolve(self, *args):
        raise AssertionError("the model was resolved")

    def executor(self, *args):
        raise AssertionError("an executor was built")

    def close(self):
        pass


def fake(segmenter=None):
    return LocalBackend(segmenter or BrightnessSegmenter())


# ---- the output folder -------------------------------------------------------------------


@pytest.mark.parametrize("dry", [False, True])
def test_an_output_that_names_a_file_is_refused_before_any_work(tmp_path, capsys, dry):
    root = make_dataset(tmp_path)
    (root / "taken").write_text("a file")
    argv = job_args(root, output="taken") + (["--dry-run"] if dry else [])
    assert label_job.main(argv, backend=Unused()) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "run.json records it" not in err
    (root / "taken").unlink()
    (root / "taken").write_text("")
    argv = job_args(root, output="taken/deeper") + (["--dry-run"] if dry else [])
    assert label_job.main(argv, backend=Unused()) == 2
    assert "a parent of the output" in capsys.readouterr().err


def test_a_read_only_output_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path)
    monkeypatch.setattr(checks, "_read_only", lambda folder: Path(folder) == root)
    assert label_job.main(job_args(root, output="new/out"), backend=Unused()) == 2
    assert "cannot be written (read-only" in capsys.readouterr().err
    assert not (root / "new").exists()


def test_a_relative_output_under_ray_job_submit_is_refused(tmp_path, capsys, monkeypatch):
    """Before: it landed in Ray's temporary package folder, which Ray deletes."""
    root = make_dataset(tmp_path)
    monkeypatch.chdir(root)
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}}
    monkeypatch.setenv(checks.RAY_JOB_CONFIG, json.dumps(job))
    argv = ["--manifest", str(root / "m.parquet"), "--vocabulary", "vocab.txt"]
    argv += ["--output", "out/submitted", "--pretrained", "none", "--dry-run"]
    assert label_job.main(argv) == 2
    err = capsys.readouterr().err
    assert "--output out/submitted is a relative path" in err and "s3://" in err
    argv[argv.index("out/submitted")] = str(root / "out")
    assert label_job.main(argv) == 0  # absolute: fine
    monkeypatch.delenv(checks.RAY_JOB_CONFIG)
    assert not checks.under_ray_job()


# ---- the model, before Ray ---------------------------------------------------------------


@pytest.mark.parametrize("dry", [False, True])
def test_global_blocks_beyond_the_models_depth_are_refused_before_ray(tmp_path, capsys, dry):
    root = make_dataset(tmp_path)
    argv = [*job_args(root), "--model", "demo", "--method-options", '{"global_blocks": [99]}']
    assert label_job.main(argv + (["--dry-run"] if dry else []), backend=Unused()) == 2
    err = capsys.readouterr().err
    assert "global_blocks (99,)" in err and "6-block backbone" in err and "--method-options" in err


def test_cuda_on_a_machine_without_one_is_refused_before_ray(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    root = make_dataset(tmp_path)
    assert label_job.main([*job_args(root), "--device", "cuda"], backend=Unused()) == 2
    assert "no usable CUDA device" in capsys.readouterr().err


def test_weights_that_cannot_be_had_are_refused_before_ray(tmp_path, capsys, monkeypatch):
    """Before: the README's folder-to-dataset command started Ray, then failed after ~29 s."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = make_dataset(tmp_path)
    argv = [a for a in job_args(root) if a not in ("--pretrained", "none")]
    start = time.monotonic()
    assert label_job.main([*argv, "--dry-run"], backend=Unused()) == 2
    err = capsys.readouterr().err
    assert "Cannot get the weights ViT-B-16-quickgelu / openai" in err and "--model demo" in err
    assert time.monotonic() - start < 60


def test_the_dry_run_names_the_weights_it_would_use(tmp_path, capsys):
    root = make_dataset(tmp_path)
    assert label_job.main([*job_args(root), "--model", "demo", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "model demo, weights open_clip_model.safetensors sha256:" in out


# ---- a changed config, a complete run ----------------------------------------------------


def test_a_changed_config_is_refused_naming_what_changed(tmp_path, capsys):
    root = make_dataset(tmp_path)
    assert label_job.main(job_args(root), backend=fake()) == 0
    capsys.readouterr()
    (root / "vocab.txt").write_text("dark\nbright\nmedium\n")
    argv = [*job_args(root), "--threshold", "0.9", "--short-side", "64"]
    assert label_job.main(argv, backend=Unused()) == 2
    err = capsys.readouterr().err
    assert "threshold: null -> 0.9" in err
    assert "inference.short_side: 448 -> 64" in err
    assert "vocabulary: 2 classes (sha " in err and "-> 3 classes (sha " in err
    assert "batch_size" not in err


def test_a_complete_run_starts_nothing_and_says_so(tmp_path, capsys):
    root = make_dataset(tmp_path)
    assert label_job.main(job_args(root), backend=fake()) == 0
    capsys.readouterr()
    assert label_job.main(job_args(root), backend=Unused()) == 0
    out = capsys.readouterr().out
    assert "run complete: 7 images labelled" in out and "no model was started" in out
    # a run with failed images to relabel has work to do
    root2 = make_dataset(tmp_path / "b", broken=(2,))
    assert label_job.main(job_args(root2), backend=fake()) == 0
    assert label_job.main([*job_args(root2), "--retry-failed"], backend=fake()) == 0
    assert "run complete" not in capsys.readouterr().out


# ---- how a run ends ----------------------------------------------------------------------


def test_a_run_in_which_every_image_failed_exits_non_zero(tmp_path, capsys):
    root = make_dataset(tmp_path, count=4, broken=(0, 1, 2, 3))
    assert label_job.main(job_args(root), backend=fake()) == 1
    assert "every image failed" in capsys.readouterr().out


def test_a_second_driver_on_the_same_output_is_refused_naming_the_first(tmp_path, capsys):
    """Before: two drivers at once both exited 0 with their settings mixed in the shards."""
    root = make_dataset(tmp_path)
    storage = Storage(str(root / "out"))
    with acquire(storage, Owner.here("python -m jobs.label (the first)")):
        assert label_job.main([*job_args(root), "--threshold", "0.9"], backend=fake()) == 2
        err = capsys.readouterr().err
        assert "host" in err and "pid" in err and "the first" in err
        assert not (root / "out" / "run.json").exists()
    assert label_job.main(job_args(root), backend=fake()) == 0  # released: free again
    assert not (root / "out" / LEASE).exists()


def test_status_says_the_driver_is_gone_when_its_lease_is_stale(tmp_path, capsys):
    root = make_dataset(tmp_path)
    assert run_labelling(config_for(root), fake()).ok
    out = root / "out"
    run = json.loads((out / "run.json").read_text())
    run["state"] = "running"  # as a kill -9 leaves it
    (out / "run.json").write_text(json.dumps(run))
    lease = acquire(Storage(str(out)), Owner.here(), timeout_s=0.5, heartbeat_every_s=0.1)
    assert status_job.main([str(out)]) == 0
    assert "held by a running driver" in capsys.readouterr().out
    time.sleep(0.7)  # no heartbeat thread: the lease goes stale, as after kill -9
    assert isinstance(lease.info, LeaseInfo)
    assert status_job.main([str(out)]) == 0
    assert "driver gone (no heartbeat for" in capsys.readouterr().out


def test_a_full_disk_ends_the_run_resumably_and_the_resume_equals_a_clean_run(tmp_path):
    root = make_dataset(tmp_path)
    assert run_labelling(config_for(root, output=str(root / "clean")), fake()).ok
    test_full = pytest.MonkeyPatch()
    try:
        _fill_the_disk(test_full)
        with pytest.raises(DiskFullError, match="No space left"):
            run_labelling(config_for(root), fake())
    finally:
        test_full.undo()
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["state"] == "failed" and "No space left" in run["error"]
    entries = Ledger(Storage(str(root / "out"))).read()
    hit = [e for e in entries.values() if e.retries.get("disk_full")]
    assert len(hit) == 1 and hit[0].state == ShardState.PENDING and hit[0].attempts == 0
    assert not any(e.state == ShardState.FAILED for e in entries.values())
    assert run_labelling(config_for(root), fake()).ok
    assert_same_outputs(root / "out", root / "clean")


def _fill_the_disk(monkeypatch):
    real = Storage.write_atomic
    written: list[str] = []

    def write_atomic(self, relative, data):
        if relative.startswith("annotations/"):
            written.append(relative)
            if len(written) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, relative, data)

    monkeypatch.setattr(Storage, "write_atomic", write_atomic)


def test_the_job_exits_1_and_says_how_to_resume_on_a_full_disk(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path)
    _fill_the_disk(monkeypatch)
    assert label_job.main([*job_args(root), "--shard-size", "3"], backend=fake()) == 1
    assert "ran out of space" in capsys.readouterr().err


SIGTERM_DRIVER = """
import sys, time
sys.path.insert(0, {tests!r})
from fakes import Slowed, BrightnessSegmenter
from pipeline import LocalBackend
import jobs.label
sys.exit(jobs.label.main({argv!r}, backend=LocalBackend(Slowed(BrightnessSegmenter(), 0.5))))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_winds_the_run_down_interrupted_and_resumable(tmp_path, signum):
    """Before: SIGTERM gave exit 1, state failed, 'SystemExit: 1' (Ray's handler) and a stack
    dump. Now the attempt in flight finishes, no new one starts, and the run says so."""
    root = make_dataset(tmp_path)
    assert run_labelling(config_for(root, output=str(root / "clean")), fake()).ok
    argv = [*job_args(root), "--images-per-call", "1", "--shard-size", "3"]
    code = SIGTERM_DRIVER.format(tests=str(ROOT / "tests"), argv=argv)
    driver = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    shards = root / "out" / "shards"
    deadline = time.monotonic() + 60
    while not (shards / "shard-000000.json").exists():
        assert time.monotonic() < deadline and driver.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)  # shard 1 is in flight now: its 3 images take 0.5 s each
    driver.send_signal(signum)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 128 + signum, err[-2000:]
    assert "resumable with the same command" in err and "stopping: no new shard" in err
    assert (shards / "shard-000001.json").exists()  # the attempt in flight finished
    assert not (shards / "shard-000002.json").exists()  # and no new one started
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["state"] == "interrupted"
    assert not (root / "out" / LEASE).exists()  # released on the way out
    assert run_labelling(config_for(root), fake()).ok
    assert_same_outputs(root / "out", root / "clean")


# ---- messages ----------------------------------------------------------------------------


def test_every_flag_has_help_and_settings_show_their_default():
    parser = build_parser()
    for action in parser._actions:
        if action.dest == "help":
            continue
        assert action.help, f"--{action.dest} has no help"
    text = parser.format_help()
    for shown in ("(default: 256)", "(default: 448)", "(default: 2048)", "(default: gclip)"):
        assert shown in text, shown


def test_a_bare_command_prints_its_usage(capsys):
    assert label_job.main([]) == 2
    captured = capsys.readouterr()
    assert "usage: python -m jobs.label" in captured.out and "--manifest" in captured.out
    assert "give --config FILE" in captured.err


def test_rays_token_notice_is_silenced_for_the_embedded_instance_only(caplog):
    from pipeline.running import ray_session

    logger = logging.getLogger(ray_session._TOKEN_NOTICE_LOGGER)
    notice = "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=..."
    with caplog.at_level(logging.WARNING, logger=logger.name):
        with ray_session._quiet_token_notice():
            logger.warning(notice)
            logger.warning("another warning")
        logger.warning(notice)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["another warning", notice]


def test_a_lease_left_by_a_killed_driver_on_this_host_is_taken_over_at_once(tmp_path):
    """After kill -9 the rerun must not wait for the lease's timeout."""
    root = make_dataset(tmp_path)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    pid = int(gone.stdout)
    owner = Owner.here()
    dead = Owner(owner.host, pid, owner.token, owner.started, "python -m jobs.label (killed)")
    acquire(Storage(str(root / "out")), dead)  # never released: as kill -9 leaves it
    assert label_job.main(job_args(root), backend=fake()) == 0


class TakesTheLease(BrightnessSegmenter):
    """On its first call, another driver takes the output's lease over (as if this driver
    had been frozen past the lease's timeout)."""

    def __init__(self, output) -> None:
        super().__init__()
        self.output = output

    def segment(self, images, vocabulary, config=None):
        if self.calls == 0:
            storage = Storage(str(self.output))
            current = storage.read_versioned(LEASE)
            other = LeaseInfo(Owner.here("the other driver"), _now(), 120.0, 20.0)
            assert storage.replace_if_unchanged(LEASE, other.encode(), current.version)
        return super().segment(images, vocabulary, config)


def test_a_driver_whose_lease_was_taken_over_stops_without_writing_over_the_new_owner(
    tmp_path, capsys
):
    root = make_dataset(tmp_path)
    backend = fake(TakesTheLease(root / "out"))
    assert label_job.main(job_args(root), backend=backend) == 1
    assert "taken over by another driver" in capsys.readouterr().err
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["state"] == "running"  # not ours to end: the new owner's
    lease = json.loads((root / "out" / LEASE).read_text())
    assert "the other driver" in lease["command"]
