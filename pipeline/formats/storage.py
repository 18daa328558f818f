"""Files on local disk or object stores through ``pyarrow.fs``, written atomically.

Writes go to a temporary name in the same folder and are renamed (local) or moved (object
stores: a server-side copy, which readers see whole or not at all) into place. A crash never
leaves a half-written file at a final path. Reads that fail transiently (a timeout, a reset
connection, an HTTP 5xx or throttling answer) are retried with exponential backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

log = logging.getLogger(__name__)
T = TypeVar("T")

# Lower-cased fragments of the messages pyarrow, S3 and the OS give for errors that may pass.
_TRANSIENT = (
    "timed out",
    "timeout",
    "connection reset",
    "reset by peer",
    "broken pipe",
    "connection refused",
    "connection aborted",
    "network_connection",
    "curlcode",
    "temporarily",
    "try again",
    "slow_down",
    "slowdown",
    "throttl",
    "service_unavailable",
    "service unavailable",
    "internal_failure",
    "internalerror",
    "response code: 5",
)
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retries of transient errors: ``attempts`` tries, waits doubling from ``first_s``.

    The defaults wait about 0.5 + 1 + 2 + 4 s (with jitter) before giving up.
    """

    attempts: int = 5
    first_s: float = 0.5
    max_s: float = 8.0

    def delay(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (0-based), with +-25 % jitter."""
        base = min(self.max_s, self.first_s * 2**retry)
        return base * random.uniform(0.75, 1.25)


READ_BACKOFF = Backoff()


def is_transient(err: BaseException) -> bool:
    """Whether a read error may pass on its own (worth retrying), from its type and message."""
    if isinstance(err, _PERMANENT):
        return False
    if isinstance(err, TimeoutError | ConnectionError):
        return True
    text = str(err).lower()
    return isinstance(err, OSError) and any(fragment in text for fragment in _TRANSIENT)


def retrying(call: Callable[[], T], what: str, backoff: Backoff | None = None) -> T:
    """``call()``, retried on transient errors; the last error is raised with the count."""
    backoff = backoff or READ_BACKOFF
    for retry in range(backoff.attempts):
        try:
            return call()
        except Exception as err:
            if not is_transient(err):
                raise
            if retry + 1 == backoff.attempts:
                raise OSError(f"{err} (gave up on {what} after {backoff.attempts} tries)") from err
            delay = backoff.delay(retry)
            log.info("transient error on %s (%s); retrying in %.1f s", what, err, delay)
            time.sleep(delay)
    raise AssertionError("unreachable: the loop returns or raises")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path, ``file://`` or ``s3://`` URI.

    S3 reads its usual credentials; ``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:9000``)
    points it at an S3-compatible server.
    """
    scheme = urlparse(location).scheme
    if scheme in ("", "file") or len(scheme) == 1:  # len 1: a Windows drive letter
        path = location.removeprefix("file://")
        return pafs.LocalFileSystem(), os.path.abspath(path)
    if scheme == "s3":
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
        if endpoint:
            parsed = urlparse(endpoint)
            fs = pafs.S3FileSystem(
                endpoint_override=parsed.netloc,
                scheme=parsed.scheme or "https",
                region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
            )
            return fs, location.removeprefix("s3://")
    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as err:
        raise ValueError(f"Unsupported location {location!r}: {err}") from err


def read_bytes(uri: str, backoff: Backoff | None = None) -> bytes:
    """Whole contents of a file named by a path or URI, transient errors retried."""

    def read() -> bytes:
        fs, path = resolve(uri)
        with fs.open_input_stream(path) as stream:
            data: bytes = stream.read()
        return data

    return retrying(read, uri, backoff)


class Storage:
    """A folder (local or object store) that a run writes its outputs under."""

    def __init__(self, root: str, create: bool = True) -> None:
        self.root = root
        self._fs, self._base = resolve(root)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        if self._local and create:
            self._fs.create_dir(self._base, recursive=True)

    def uri(self, relative: str) -> str:
        """A user-facing location of ``relative`` (for messages and logs)."""
        return f"{self.root.rstrip('/')}/{relative}"

    def _path(self, relative: str) -> str:
        return f"{self._base.rstrip('/')}/{relative}"

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Write ``data`` to ``relative`` so that the file appears complete or not at all."""
        with self.open_atomic(relative) as stream:
            stream.write(data)

    @contextlib.contextmanager
    def open_atomic(self, relative: str) -> Iterator[BinaryIO]:
        """A binary stream whose contents appear at ``relative`` only if the block succeeds.

        Data goes to a temporary name beside the target and is renamed (local) or moved
        (object stores) into place only when the block succeeds.
        """
        path = self._path(relative)
        parent, name = path.rsplit("/", 1)
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        if not self._local:
            # Closing an object-store stream commits it even after an error, so the data goes
            # to a temporary key first and is moved (a server-side copy) only on success.
            try:
                with self._fs.open_output_stream(temp) as stream:
                    yield stream
                self._fs.move(temp, path)
            finally:
                if self._fs.get_file_info(temp).type == pafs.FileType.File:
                    self._fs.delete_file(temp)
            return
        self._fs.create_dir(parent, recursive=True)
        try:
            with open(temp, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, path)
        finally:
            if os.path.exists(temp):
                os.remove(temp)

    def read(self, relative: str) -> bytes:
        def read() -> bytes:
            with self._fs.open_input_stream(self._path(relative)) as stream:
                data: bytes = stream.read()
            return data

        return retrying(read, self.uri(relative))

    def delete(self, relative: str) -> None:
        """Remove ``relative`` if it is there."""
        if self.exists(relative):
            self._fs.delete_file(self._path(relative))

    def exists(self, relative: str) -> bool:
        return bool(self._fs.get_file_info(self._path(relative)).type == pafs.FileType.File)

    def list(self, folder: str) -> list[str]:
        """Relative paths of the files directly in ``folder``, sorted; temporaries skipped."""
        selector = pafs.FileSelector(self._path(folder), allow_not_found=True)
        names = [
            info.path.rsplit("/", 1)[1]
            for info in self._fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ]
        return sorted(f"{folder}/{n}" for n in names if not n.startswith(".tmp-"))
