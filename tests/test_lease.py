"""The output folder's lease: of drivers racing for one folder exactly one wins (threads and
processes, local disk and S3), a stale lease is taken over by exactly one, heartbeats keep it
fresh through transient errors, and only its owner releases it."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import pickle
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

import schemas
from pipeline.errors import InputError
from pipeline.formats.storage import Storage
from pipeline.running.lease import (
    LEASE,
    Lease,
    LeaseHeldError,
    LeaseLostError,
    Owner,
    acquire,
    read_lease,
)

RACERS = 8


@pytest.fixture(scope="module")
def serial_s3() -> Iterator[str]:
    """An S3 server (moto, in this process) that answers one request at a time.

    moto checks a PUT's If-None-Match / If-Match and then stores the object in a second step
    without a lock, so two concurrent conditional writes could both pass; S3 itself makes
    them atomic. Serialising requests makes the races below test this code, not moto's.
    """
    pytest.importorskip("moto.server")
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    one_at_a_time = threading.Lock()

    def serial(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with one_at_a_time:
            return list(app(environ, start_response))

    server = make_server("127.0.0.1", 0, serial, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(timeout=10)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, monkeypatch) -> str:
    """An empty output folder: on local disk, or in a bucket of the serial S3 server."""
    if request.param == "local":
        return str(tmp_path / "out")
    endpoint = request.getfixturevalue("serial_s3")
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import boto3

    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="leases")
    return f"s3://leases/{uuid.uuid4().hex}"


def race(storage: Storage, owners: list[Owner]) -> tuple[list[Lease], list[LeaseHeldError]]:
    """Every owner calls :func:`acquire` at once (one thread each)."""
    barrier = threading.Barrier(len(owners))
    won: list[Lease] = []
    lost: list[LeaseHeldError] = []
    others: list[BaseException] = []

    def contend(owner: Owner) -> None:
        barrier.wait(timeout=30)
        try:
            won.append(acquire(storage, owner))
        except LeaseHeldError as err:
            lost.append(err)
        except BaseException as err:
            others.append(err)

    threads = [threading.Thread(target=contend, args=(o,)) for o in owners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not others, others
    return won, lost


def check_one_winner(
    storage: Storage, won: list[Lease], lost: list[LeaseHeldError], racers: int
) -> None:
    assert len(won) == 1 and len(lost) == racers - 1
    winner = won[0].info.owner
    for err in lost:
        assert err.holder.owner == winner
        message = str(err)
        assert f"host {winner.host}, pid {winner.pid}" in message
        assert f"(command: {winner.command})" in message and "last heartbeat" in message
        assert "taken over automatically after 120 s without a heartbeat" in message
    held = read_lease(storage)
    assert held is not None and held.owner == winner


def stale_lease(storage: Storage) -> Lease:
    """A lease whose driver stopped heartbeating: stale 0.2 s after it was taken."""
    lease = acquire(storage, Owner.here("old driver"), timeout_s=0.2)
    time.sleep(0.4)
    held = read_lease(storage)
    assert held is not None and held.is_stale()
    return lease


def test_threads_racing_for_a_folder_one_wins(root):
    storage = Storage(root)
    owners = [Owner.here(f"racer {i}") for i in range(RACERS)]
    won, lost = race(storage, owners)
    check_one_winner(storage, won, lost, RACERS)


def _contend_in_process(root: str, barrier: Any, results: Any) -> None:
    """A driver process: waits for the others, then tries to take the lease (kept if won)."""
    storage = Storage(root)
    barrier.wait(timeout=120)
    try:
        acquire(storage, Owner.here(f"process {os.getpid()}"))
        results.put(("won", os.getpid(), ""))
    except LeaseHeldError as err:
        results.put(("lost", os.getpid(), str(err)))
    except BaseException as err:
        results.put(("error", os.getpid(), repr(err)))


@pytest.mark.slow
def test_processes_racing_for_a_folder_one_wins(root):
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    barrier, results = context.Barrier(4), context.Queue()
    processes = [
        context.Process(target=_contend_in_process, args=(root, barrier, results)) for _ in range(4)
    ]
    for p in processes:
        p.start()
    try:
        outcomes = [results.get(timeout=180) for _ in processes]
    finally:
        for p in processes:
            p.join(timeout=60)
    assert [p.exitcode for p in processes] == [0] * 4
    won = [pid for kind, pid, _ in outcomes if kind == "won"]
    assert len(won) == 1, outcomes
    losers = [message for kind, _, message in outcomes if kind == "lost"]
    assert len(losers) == 3, outcomes
    assert all(f"pid {won[0]}" in m and "is held by another run" in m for m in losers)
    held = read_lease(Storage(root))
    assert held is not None and held.owner.pid == won[0]


def test_a_stale_lease_is_taken_over_and_the_old_owner_stands_down(root, caplog):
    storage = Storage(root)
    old = stale_lease(storage)
    with caplog.at_level(logging.WARNING, logger="pipeline.running.lease"):
        new = acquire(storage, Owner.here("new driver"))
    assert "took over the stale lease" in caplog.text
    assert f"pid {old.info.owner.pid}" in caplog.text and "no heartbeat for" in caplog.text
    held = read_lease(storage)
    assert held is not None and held.owner == new.info.owner
    # The old driver comes back: its heartbeat finds the lease gone, its release leaves it.
    assert old.refresh() is False and old.lost
    with pytest.raises(LeaseLostError, match="taken over by another driver"):
        old.ensure_held()
    assert old.release() is False
    held = read_lease(storage)
    assert held is not None and held.owner == new.info.owner
    assert new.release() is True and read_lease(storage) is None


def test_concurrent_takeovers_of_a_stale_lease_one_wins(root):
    storage = Storage(root)
    stale_lease(storage)
    owners = [Owner.here(f"taker {i}") for i in range(RACERS)]
    won, lost = race(storage, owners)
    check_one_winner(storage, won, lost, RACERS)


def test_heartbeats_keep_a_lease_fresh_until_released(root):
    storage = Storage(root)
    lease = acquire(storage, Owner.here(), timeout_s=1.0, heartbeat_every_s=0.1)
    first = lease.info.heartbeat
    with lease:
        time.sleep(1.5)  # longer than the timeout: only the heartbeats keep it fresh
        held = read_lease(storage)
        assert held is not None and held.heartbeat > first and not held.is_stale()
        with pytest.raises(LeaseHeldError):
            acquire(storage, Owner.here("second driver"))
        thread = lease._thread
    assert thread is not None and not thread.is_alive()
    assert read_lease(storage) is None
    acquire(storage, Owner.here("next run")).release()


def test_a_heartbeat_outlives_transient_storage_errors(tmp_path, monkeypatch, caplog):
    storage = Storage(str(tmp_path / "out"))
    lease = acquire(storage, Owner.here(), timeout_s=5.0, heartbeat_every_s=0.05)
    first = lease.info.heartbeat
    read_versioned = storage.read_versioned
    failures = iter(range(3))

    def flaky(relative: str):
        if next(failures, None) is not None:
            raise OSError("connection reset by peer")
        return read_versioned(relative)

    monkeypatch.setattr(storage, "read_versioned", flaky)
    with caplog.at_level(logging.WARNING, logger="pipeline.running.lease"), lease:
        deadline = time.monotonic() + 10
        while lease.info.heartbeat == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lease.info.heartbeat > first and not lease.lost
        assert lease._thread is not None and lease._thread.is_alive()
    assert caplog.text.count("connection reset by peer") == 3
    assert "trying again" in caplog.text and read_lease(storage) is None


def test_release_by_a_non_owner_does_nothing(root):
    storage = Storage(root)
    owner = acquire(storage, Owner.here("owner"))
    impostor = Lease(storage, replace(owner.info, owner=Owner.here("impostor")))
    assert impostor.release() is False and impostor.refresh() is False
    held = read_lease(storage)
    assert held is not None and held.owner == owner.info.owner
    assert owner.release() is True and owner.release() is False


def test_read_lease_tells_a_live_driver_from_a_gone_one(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    assert read_lease(storage) is None
    lease = acquire(storage, Owner.here(), timeout_s=0.3)  # then killed: no more heartbeats
    held = read_lease(storage)
    assert held is not None and not held.is_stale()
    assert held.describe().startswith("held by a running driver")
    assert f"pid {os.getpid()}" in held.describe()
    later = held.heartbeat + timedelta(seconds=300)
    assert held.heartbeat_age_s(later) == 300 and held.is_stale(later)
    assert held.describe(later).startswith("driver gone (no heartbeat for 300 s")
    time.sleep(0.5)
    assert read_lease(storage).is_stale()  # type: ignore[union-attr]
    assert lease.info == held


def test_the_lease_file_is_sorted_json_that_matches_its_schema(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    lease = acquire(storage, Owner.here("jobs.label --output out"))
    text = (tmp_path / "out" / LEASE).read_text()
    obj = json.loads(text)
    schemas.validate(obj, "lease")
    assert list(obj) == sorted(obj) and obj["command"] == "jobs.label --output out"
    assert obj["timeout_s"] == 120 and obj["heartbeat_every_s"] == 20
    assert obj["pid"] == os.getpid() and obj["token"] == lease.info.owner.token
    assert [p.name for p in (tmp_path / "out").iterdir() if ".tmp-" in p.name] == []


def test_a_create_whose_answer_was_lost_is_still_ours(tmp_path, monkeypatch):
    """A retried create can find its own first attempt there (its answer lost in transit)."""
    storage = Storage(str(tmp_path / "out"))
    create = storage.create_exclusive
    monkeypatch.setattr(storage, "create_exclusive", lambda rel, data: create(rel, data) and False)
    owner = Owner.here()
    assert acquire(storage, owner).info.owner == owner


def test_a_file_that_is_not_a_lease_is_refused(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    storage.write_atomic(LEASE, b'{"who": "someone"}')
    with pytest.raises(InputError, match="is not a lease .* delete the file"):
        acquire(storage, Owner.here())
    with pytest.raises(InputError, match="is not a lease"):
        read_lease(storage)


def test_lease_held_error_exits_2_and_survives_pickling(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    acquire(storage, Owner.here())
    with pytest.raises(LeaseHeldError) as caught:
        acquire(storage, Owner.here())
    assert isinstance(caught.value, InputError)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert copy.holder == caught.value.holder and "is held by another run" in str(copy)
