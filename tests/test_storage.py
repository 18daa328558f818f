"""Storage: atomic writes leave neither a partial file nor a temporary behind; http(s) reads
go through the same transient-error retries as object stores."""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import time
import urllib.error
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

import pytest

from pipeline.formats.storage import (
    Backoff,
    HTTPStatusError,
    Storage,
    is_transient,
    read_bytes,
    read_head,
)

FAST = Backoff(attempts=3, first_s=0.0)


class Boom(Exception):
    pass


def check_atomic(storage: Storage) -> None:
    storage.write_atomic("a/b.json", b"old")
    with pytest.raises(Boom), storage.open_atomic("a/b.json") as stream:
        stream.write(b"new but unfinished")
        raise Boom
    assert storage.read("a/b.json") == b"old"
    with pytest.raises(Boom), storage.open_atomic("a/c.json") as stream:
        stream.write(b"partial")
        raise Boom
    assert not storage.exists("a/c.json")
    assert storage.list("a") == ["a/b.json"]  # no temporaries listed or left
    storage.write_atomic("a/b.json", b"new")
    assert storage.read("a/b.json") == b"new"


def test_local_writes_are_atomic(tmp_path):
    check_atomic(Storage(str(tmp_path / "out")))
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["b.json"]


class FileHandler(SimpleHTTPRequestHandler):
    """Serves a folder; ``script`` maps a path to statuses answered before the file (one
    each request), ``delay_s`` stalls every answer, ``requests`` records each path asked."""

    script: dict[str, list[int]]
    requests: list[str]
    delay_s = 0.0

    def do_GET(self) -> None:
        self.requests.append(self.path)
        time.sleep(self.delay_s)
        statuses = self.script.get(self.path)
        if statuses:
            self.send_error(statuses.pop(0))
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)
        # else: a client hung up after the bytes it wanted (read_head does so)


@contextlib.contextmanager
def serve(
    folder: Path, script: dict[str, list[int]] | None = None, delay_s: float = 0.0
) -> Iterator[tuple[str, list[str]]]:
    """``(base URL, requests seen)`` of a threaded http server on a free loopback port."""
    handler = type(
        "Handler", (FileHandler,), {"script": script or {}, "requests": [], "delay_s": delay_s}
    )
    server = QuietServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def web(tmp_path):
    (tmp_path / "sub").mkdir()
    files = {"a.bin": bytes(range(256)) * 300, "sub/ünïcödé 猫.bin": b"cat bytes", "empty": b""}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path, files


def test_http_reads_return_the_files_bytes(web):
    folder, files = web
    with serve(folder) as (base, _):
        assert read_bytes(f"{base}/a.bin") == files["a.bin"]
        encoded = f"{base}/sub/{quote('ünïcödé 猫.bin')}"
        assert read_bytes(encoded) == read_bytes(f"{base}/sub/ünïcödé 猫.bin") == b"cat bytes"
        # http.server ignores Range: the answer is cut after the bytes asked for
        assert read_head(f"{base}/a.bin", 1000) == files["a.bin"][:1000]
        assert read_head(f"{base}/empty", 1000) == b""


def test_http_404_fails_at_once_naming_the_url(web):
    folder, _ = web
    with serve(folder) as (base, requests):
        with pytest.raises(FileNotFoundError, match=rf"HTTP 404 .*{base}/missing.jpg"):
            read_bytes(f"{base}/missing.jpg", FAST)
        assert requests == ["/missing.jpg"]  # not retried


def test_http_5xx_and_throttling_are_retried(web):
    folder, files = web
    with serve(folder, {"/a.bin": [503, 429, 500]}) as (base, requests):
        assert read_bytes(f"{base}/a.bin", Backoff(attempts=4, first_s=0.0)) == files["a.bin"]
        assert len(requests) == 4
    with serve(folder, {"/a.bin": [502] * 5}) as (base, requests):
        with pytest.raises(OSError, match=r"HTTP 502 .*gave up on .* after 3 tries"):
            read_bytes(f"{base}/a.bin", FAST)
        assert len(requests) == 3
    with serve(folder, {"/a.bin": [400, 400]}) as (base, requests):
        with pytest.raises(HTTPStatusError, match="HTTP 400"):
            read_bytes(f"{base}/a.bin", FAST)
        assert len(requests) == 1


def test_http_timeouts_are_retried_then_reported(web):
    folder, _ = web
    with serve(folder, delay_s=1.0) as (base, requests):
        start = time.monotonic()
        with pytest.raises(OSError, match="timed out.*gave up .* after 3 tries"):
            read_bytes(f"{base}/a.bin", FAST, timeout_s=0.1)
        assert len(requests) == 3 and time.monotonic() - start < 1.0


def test_an_unreachable_server_is_transient(tmp_path):
    with serve(tmp_path) as (base, _):
        pass  # the port is free again: connections are refused
    with pytest.raises(OSError, match="gave up .* after 3 tries") as caught:
        read_bytes(f"{base}/a.bin", FAST)
    assert is_transient(caught.value.__cause__)


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (HTTPStatusError("http://h/a", 503, "Service Unavailable"), True),
        (HTTPStatusError("http://h/a", 500, "Internal Server Error"), True),
        (HTTPStatusError("http://h/a", 429, "Too Many Requests"), True),
        (HTTPStatusError("http://h/a", 400, "Bad Request"), False),
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), True),
        (urllib.error.URLError(TimeoutError("timed out")), True),
        (urllib.error.URLError("unknown url type: htp"), False),
    ],
)
def test_http_errors_are_told_apart(error, transient):
    assert is_transient(error) is transient


def check_conditional(storage: Storage) -> None:
    """Create-if-absent, replace-if-unchanged and delete-if-unchanged, one caller at a time."""
    assert storage.read_versioned("lock/l.json") is None
    assert storage.create_exclusive("lock/l.json", b"first") is True
    assert storage.create_exclusive("lock/l.json", b"second") is False
    first = storage.read_versioned("lock/l.json")
    assert first is not None and first.data == b"first"
    assert storage.replace_if_unchanged("lock/l.json", b"third", first.version) is True
    third = storage.read_versioned("lock/l.json")
    assert third is not None and third.data == b"third" and third.version != first.version
    assert storage.replace_if_unchanged("lock/l.json", b"stale", first.version) is False
    assert storage.delete_if_unchanged("lock/l.json", first.version) is False
    assert storage.read("lock/l.json") == b"third"
    assert storage.delete_if_unchanged("lock/l.json", third.version) is True
    assert not storage.exists("lock/l.json")
    assert storage.replace_if_unchanged("lock/l.json", b"gone", third.version) is False
    assert storage.delete_if_unchanged("lock/l.json", third.version) is False
    assert storage.create_exclusive("lock/l.json", b"again") is True
    # No temporaries listed or left; local disk keeps its lock sidecar ``.l.json.lock``.
    assert [p for p in storage.list("lock") if not p.endswith(".lock")] == ["lock/l.json"]


def test_local_conditional_writes(tmp_path):
    check_conditional(Storage(str(tmp_path / "out")))
    assert [p.name for p in (tmp_path / "out" / "lock").iterdir() if ".tmp-" in p.name] == []


@pytest.mark.slow
def test_s3_conditional_writes(s3_env):
    check_conditional(Storage("s3://labels/conditional"))


def test_local_conditional_writes_have_one_winner(tmp_path):
    storage = Storage(str(tmp_path / "out"))
    racers = 8

    def race(write) -> list[int]:
        barrier, won = threading.Barrier(racers), []

        def contend(i: int) -> None:
            barrier.wait(timeout=30)
            if write(i):
                won.append(i)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return won

    created = race(lambda i: storage.create_exclusive("l.json", b"%d" % i))
    assert len(created) == 1 and storage.read("l.json") == b"%d" % created[0]
    current = storage.read_versioned("l.json")
    assert current is not None
    replaced = race(lambda i: storage.replace_if_unchanged("l.json", b"r%d" % i, current.version))
    assert len(replaced) == 1 and storage.read("l.json") == b"r%d" % replaced[0]
