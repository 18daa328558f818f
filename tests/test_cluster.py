"""The path cluster users take: ``ray start --head``, then ``ray job submit --working-dir .``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if not found:
        pytest.skip("the ray CLI is not installed")
    return found


def test_ray_job_submit_on_a_local_cluster(tmp_path):
    ray = ray_cli()
    # The cluster (and so the job's `python`) uses this interpreter's environment, as when a
    # user runs `ray start` inside their activated virtualenv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    start = [
        ray,
        "start",
        "--head",
        "--num-cpus",
        "2",
        "--dashboard-host",
        "127.0.0.1",
        "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, env=env, capture_output=True, timeout=180)
    try:
        out = tmp_path / "out"
        submit = [
            ray,
            "job",
            "submit",
            "--address",
            "http://127.0.0.1:8265",
            "--working-dir",
            ".",
            "--",
            "python",
            "-m",
            "jobs.label",
            "--manifest",
            "demo/manifest.parquet",
            "--vocabulary",
            "demo/vocabulary.txt",
            "--output",
            str(out),
            "--model",
            "demo",
            "--shard-size",
            "8",
            "--short-side",
            "64",
            "--crop",
            "64",
            "--stride",
            "32",
        ]
        result = subprocess.run(
            submit, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
        assert "16 images labelled" in result.stdout
        run = json.loads((out / "run.json").read_text())
        assert run["state"] == "finished" and run["counts"]["images_labelled"] == 16
        coco = json.loads((out / "annotations.json").read_text())
        assert len(coco["images"]) == 16 and coco["annotations"]
        status = subprocess.run(
            [sys.executable, "-m", "jobs.status", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert status.returncode == 0 and "2 done" in status.stdout
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
