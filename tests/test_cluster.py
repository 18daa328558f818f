"""The path cluster users take: ``ray start --head``, then ``ray job submit --working-dir .``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def ray_cli() -> str:
    found = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if not found:
        pytest.skip("the ray CLI is not installed")
    return found


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now (all held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_for_dashboard(url: str, timeout_s: float = 120) -> None:
    """Until the dashboard answers HTTP at all (with token auth on, 401 is an answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def submit(command: list[str], env: dict[str, str], timeout_s: float = 600):
    """``ray job submit``, tried again while the head's job agent is not up yet (a submit that
    finds no agent creates no job, so trying again is safe)."""
    deadline = time.monotonic() + 120
    while True:
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
        )
        if "No available agent" not in result.stdout + result.stderr:
            return result
        if time.monotonic() > deadline:
            return result
        time.sleep(2)


def test_ray_job_submit_on_a_local_cluster(tmp_path):
    ray = ray_cli()
    # The cluster (and so the job's `python`) uses this interpreter's environment, as when a
    # user runs `ray start` inside their activated virtualenv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard, agent, agent_grpc, client, runtime_env, metrics = free_ports(7)
    start = [
        ray,
        "start",
        "--head",
        "--num-cpus",
        "2",
        "--port",
        str(gcs),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--ray-client-server-port",
        str(client),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--disable-usage-stats",
    ]
    started = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, (started.stdout + started.stderr)[-3000:]
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_for_dashboard(url)
        out = tmp_path / "out"
        command = [
            ray,
            "job",
            "submit",
            "--address",
            url,
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
        result = submit(command, env)
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
