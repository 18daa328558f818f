"""The path cluster users take: ``ray start --head``, then ``ray job submit --working-dir .``.

Other Ray instances may run on the same machine (other test sessions, a user's cluster), so a
test stops only what it started: the head runs under ``ray start --block`` in a process
session of its own, with its own ``--temp-dir`` and auth token, and is ended by its PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


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


def wait_for_dashboard(url: str, head: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    """Until the dashboard answers HTTP at all (with token auth on, 401 is an answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}: {log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def processes_using(folder: str) -> list[int]:
    """PIDs of processes whose command line names ``folder`` (this test's Ray temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if folder in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace"
            ):
                found.append(int(entry.name))
    return found


def stop_head(head: subprocess.Popen, temp_dir: str) -> None:
    """End the head this test started, and only it: SIGTERM to ``ray start --block`` (which
    shuts its node down), then SIGKILL to its process group and to any process left that
    names this test's temp folder."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            head.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(head.pid, signal.SIGKILL)  # its own session: the group holds only its processes
    if head.poll() is None:
        head.wait(timeout=30)
    for pid in processes_using(temp_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def ray_head(ray: str, env: dict[str, str], log: Path) -> Iterator[str]:
    """A one-node cluster from ``ray start --head``, on free ports and a temp folder of its own;
    yields the dashboard's URL and stops the head (only this one) on the way out."""
    gcs, dashboard, agent, agent_grpc, client, runtime_env, metrics = free_ports(7)
    # A short path: Ray's Unix sockets live under it and their paths must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    start = [
        ray,
        "start",
        "--head",
        "--block",
        "--temp-dir",
        temp_dir,
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
    with open(log, "wb") as out:
        head = subprocess.Popen(
            start, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = f"http://127.0.0.1:{dashboard}"
        wait_for_dashboard(url, head, log)
        yield url
    finally:
        stop_head(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


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


@pytest.mark.ray
@pytest.mark.slow
def test_ray_job_submit_on_a_local_cluster(tmp_path):
    ray = ray_cli()
    # The cluster (and so the job's `python`) uses this interpreter's environment, as when a
    # user runs `ray start` inside their activated virtualenv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # A token of its own, not ~/.ray/auth_token that other clusters on this machine may share.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    with ray_head(ray, env, tmp_path / "ray-start.log") as url:
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
            # Absolute: the driver runs in Ray's temporary copy of the working dir.
            "--manifest",
            str(ROOT / "demo" / "manifest.parquet"),
            "--vocabulary",
            str(ROOT / "demo" / "vocabulary.txt"),
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


def test_no_test_stops_processes_it_did_not_start():
    """Stopping Ray for the whole machine, or ending processes by name, would end other
    sessions' clusters and processes: tests end what they start by its handle or PID."""
    # Spelled in pieces so that this guard does not find itself.
    forbidden = re.compile(
        r"\bray\b[\"',\s]+" + "st" + r"op\b" + "|" + r"\bp" + "kill" + r"\b|\bkill" + r"all\b"
    )
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(TESTS.rglob("*"))
        if path.is_file() and path.suffix in (".py", ".sh", ".toml", ".cfg", ".ini", ".txt")
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if forbidden.search(line)
    ]
    assert not hits, "tests must stop only what they started:\n" + "\n".join(hits)
