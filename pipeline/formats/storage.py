"""Files on local disk or object stores through ``pyarrow.fs``, written atomically.

Writes go to a temporary name in the same folder and are renamed (local) or moved (object
stores: a server-side copy, which readers see whole or not at all) into place. A crash never
leaves a half-written file at a final path. Reads that fail transiently (a timeout, a reset
connection, an HTTP 5xx or throttling answer) are retried with exponential backoff.

:func:`read_bytes` also reads ``http://`` and ``https://`` URLs (read-only, with the standard
library): a 404 or 410 is a :class:`FileNotFoundError`, 401 and 403 a :class:`PermissionError`,
and 5xx, 408 and 429 answers are transient.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar
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
HTTP_TIMEOUT_S = 30.0  # per connect and per socket read, not for the whole download
HTTP_SCHEMES = ("http", "https")
# S3 answers 409 while another conditional write of the same key is in flight: worth a retry.
_CONDITIONAL_ATTEMPTS = 4


@dataclass(frozen=True, slots=True)
class Versioned:
    """A file's bytes and its version: the ETag on object stores, the sha256 of the bytes on
    local disk. A conditional write or delete given ``version`` succeeds only if the file
    still holds exactly this version."""

    data: bytes
    version: str


class HTTPStatusError(OSError):
    """An http(s) server answered a read with an error status other than 404/410/401/403."""

    def __init__(self, url: str, status: int, reason: str) -> None:
        super().__init__(f"HTTP {status} {reason} from {url}")
        self.status = status

    @property
    def transient(self) -> bool:
        """Server trouble (5xx), a request timeout (408) or throttling (429): worth a retry."""
        return self.status >= 500 or self.status in (408, 429)


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
    if isinstance(err, HTTPStatusError):
        return err.transient
    if isinstance(err, urllib.error.URLError) and isinstance(err.reason, BaseException):
        return is_transient(err.reason)  # urllib wraps the socket error: judge that one
    if isinstance(err, TimeoutError | ConnectionError | http.client.IncompleteRead):
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


def read_bytes(uri: str, backoff: Backoff | None = None, timeout_s: float | None = None) -> bytes:
    """Whole contents of a file named by a path or URI, transient errors retried.

    Args:
        uri: a local path, ``file://``, ``s3://`` (see :func:`resolve`), ``http://`` or
            ``https://`` location.
        backoff: retries of transient errors; :data:`READ_BACKOFF` when not given.
        timeout_s: http(s) only: seconds to connect and to wait for each read from the
            socket; :data:`HTTP_TIMEOUT_S` when not given.

    Raises:
        FileNotFoundError: no such file (for http(s): a 404 or 410 answer).
        OSError: any other read error, after retries if it was transient.
    """
    return _read(uri, None, backoff, HTTP_TIMEOUT_S if timeout_s is None else timeout_s)


def read_head(uri: str, size: int, backoff: Backoff | None = None) -> bytes:
    """The first ``size`` bytes of a file (all of it if shorter), as :func:`read_bytes` reads.

    One ranged read on object stores and http(s) (a server that ignores ``Range`` is cut
    off after ``size`` bytes), so headers of large files cost one small request.
    """
    return _read(uri, size, backoff, HTTP_TIMEOUT_S)


def _read(uri: str, size: int | None, backoff: Backoff | None, timeout_s: float) -> bytes:
    """The file's bytes (its first ``size`` if given), transient errors retried."""
    if urllib.parse.urlsplit(uri).scheme.lower() in HTTP_SCHEMES:
        return retrying(lambda: _read_http(uri, timeout_s, size), uri, backoff)

    def read() -> bytes:
        fs, path = resolve(uri)
        if size is None:  # a stream: no seeks, no size request first
            with fs.open_input_stream(path) as stream:
                data: bytes = stream.read()
        else:
            with fs.open_input_file(path) as handle:
                data = handle.read(size)
        return data

    return retrying(read, uri, backoff)


def _read_http(url: str, timeout_s: float, size: int | None = None) -> bytes:
    """One GET of ``url`` (its first ``size`` bytes if given); error statuses become the
    exceptions :func:`is_transient` sorts."""
    headers = {"User-Agent": "gclip-label"}
    if size is not None:
        headers["Range"] = f"bytes=0-{size - 1}"
    request = urllib.request.Request(_quoted(url), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data: bytes = response.read() if size is None else response.read(size)
    except urllib.error.HTTPError as err:
        status, reason = err.code, err.reason
        err.close()  # the error holds the open response
        if status == 416 and size is not None:
            return b""  # range not satisfiable: the file is empty
        if status in (404, 410):
            raise FileNotFoundError(f"HTTP {status} {reason}: {url} does not exist") from err
        if status in (401, 403):
            raise PermissionError(f"HTTP {status} {reason}: {url} refused access") from err
        raise HTTPStatusError(url, status, str(reason)) from err
    except http.client.IncompleteRead as err:
        raise ConnectionError(f"{url}: the response ended early ({err!r})") from err
    return data


def _quoted(url: str) -> str:
    """``url`` with spaces and non-ASCII characters percent-encoded (urllib refuses them).

    Existing ``%XX`` escapes are kept, so a URL that is already encoded is left as it is.
    """
    parts = urllib.parse.urlsplit(url)
    path = urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=~-._")
    query = urllib.parse.quote(parts.query, safe="=&%+/:;,@!$'()*~-._?")
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, query, parts.fragment))


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

    # Conditional operations: the primitives of a lease (see pipeline.running.lease). pyarrow
    # has no conditional writes, so on S3 they go through boto3 (If-None-Match / If-Match);
    # on local disk a hard link creates exclusively and a lock on a sidecar file serialises
    # the compare-and-swap steps.

    def create_exclusive(self, relative: str, data: bytes) -> bool:
        """Create ``relative`` holding ``data`` if no file is there: ``True`` if this call made it.

        Atomic: readers see the whole ``data`` or no file; of several concurrent callers
        (threads, processes, hosts) exactly one gets ``True``.
        """
        if not self._local:
            return self._s3_put(relative, data, IfNoneMatch="*")
        path = self._path(relative)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self._local_temp(path, data) as temp:
            try:
                os.link(temp, path)  # fails if ``path`` exists, unlike a rename
            except FileExistsError:
                return False
        return True

    def read_versioned(self, relative: str) -> Versioned | None:
        """``relative``'s bytes and version, or ``None`` if there is no such file."""
        if not self._local:
            bucket, key = self._s3_key(relative)
            try:
                answer = _s3_client().get_object(Bucket=bucket, Key=key)
            except Exception as err:
                if _s3_code(err) in ("NoSuchKey", "404"):
                    return None
                raise
            return Versioned(answer["Body"].read(), answer["ETag"])
        try:
            with open(self._path(relative), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            return None
        return Versioned(data, _digest(data))

    def replace_if_unchanged(self, relative: str, data: bytes, version: str) -> bool:
        """Replace ``relative`` by ``data`` only if it still holds ``version``: ``True`` if
        replaced; ``False`` if it changed or vanished. Of several callers given the same
        version, at most one gets ``True``."""
        if not self._local:
            return self._s3_put(relative, data, IfMatch=version)
        path = self._path(relative)
        with self._sidecar_lock(path):
            if _local_version(path) != version:
                return False
            with self._local_temp(path, data) as temp:
                os.replace(temp, path)
        return True

    def delete_if_unchanged(self, relative: str, version: str) -> bool:
        """Delete ``relative`` only if it still holds ``version``: ``True`` if deleted."""
        if not self._local:
            bucket, key = self._s3_key(relative)
            try:
                _s3_client().delete_object(Bucket=bucket, Key=key, IfMatch=version)
            except Exception as err:
                code = _s3_code(err)
                if code in ("PreconditionFailed", "NoSuchKey", "404", "412"):
                    return False
                if code != "NotImplemented":
                    raise
                # A server without conditional deletes: the caller has just read ``version``,
                # so an unconditional delete leaves only that short window unguarded.
                _s3_client().delete_object(Bucket=bucket, Key=key)
            return True
        path = self._path(relative)
        with self._sidecar_lock(path):
            if _local_version(path) != version:
                return False
            os.remove(path)
        return True

    @contextlib.contextmanager
    def _local_temp(self, path: str, data: bytes) -> Iterator[str]:
        """A complete, synced temporary file beside ``path`` holding ``data``; removed after."""
        parent, name = path.rsplit("/", 1)
        temp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            yield temp
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)

    @contextlib.contextmanager
    def _sidecar_lock(self, path: str) -> Iterator[None]:
        """An exclusive lock on ``.<name>.lock`` beside ``path`` (threads and processes).

        The sidecar is never deleted: removing a lock file that another process holds open
        would let a third lock a new file of the same name.
        """
        parent, name = path.rsplit("/", 1)
        with open(f"{parent}/.{name}.lock", "ab") as handle:
            if sys.platform == "win32":
                import msvcrt

                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)  # retries for 10 s
                try:
                    yield
                finally:
                    handle.seek(0)
                    msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _s3_key(self, relative: str) -> tuple[str, str]:
        if not self.root.startswith("s3://"):
            raise ValueError(
                f"Conditional writes need local disk or s3://, not {self.root!r}: "
                "write the output to one of those"
            )
        bucket, _, key = self._path(relative).partition("/")
        return bucket, key

    def _s3_put(self, relative: str, data: bytes, **condition: str) -> bool:
        """A conditional PUT: ``True`` if written, ``False`` if the condition failed."""
        bucket, key = self._s3_key(relative)
        for attempt in range(_CONDITIONAL_ATTEMPTS):
            try:
                _s3_client().put_object(Bucket=bucket, Key=key, Body=data, **condition)
                return True
            except Exception as err:
                code = _s3_code(err)
                if code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                    return False  # NoSuchKey: an If-Match on a key that was deleted
                if code != "ConditionalRequestConflict" or attempt + 1 == _CONDITIONAL_ATTEMPTS:
                    raise
                time.sleep(READ_BACKOFF.delay(attempt))
        raise AssertionError("unreachable: the loop returns or raises")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _local_version(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            return _digest(handle.read())
    except FileNotFoundError:
        return None


_S3_CLIENTS: dict[tuple[int, str | None, str | None], Any] = {}
_S3_CLIENTS_LOCK = threading.Lock()


def _s3_client() -> Any:
    """A boto3 S3 client configured as :func:`resolve` configures pyarrow, one per process.

    boto3 reads the same credentials; the endpoint (``AWS_ENDPOINT_URL``, else
    ``AWS_ENDPOINT_URL_S3``) and ``AWS_DEFAULT_REGION`` are passed explicitly, in the order
    :func:`resolve` reads them, so both clients reach the same server.
    """
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    region = os.environ.get("AWS_DEFAULT_REGION") or ("us-east-1" if endpoint else None)
    cache_key = (os.getpid(), endpoint, region)  # a forked child must not reuse a parent's
    with _S3_CLIENTS_LOCK:
        if cache_key not in _S3_CLIENTS:
            import boto3  # only for conditional writes on S3

            session = boto3.session.Session()  # sessions are not thread-safe: one of our own
            _S3_CLIENTS[cache_key] = session.client(
                "s3", endpoint_url=endpoint or None, region_name=region
            )
        return _S3_CLIENTS[cache_key]


def _s3_code(err: BaseException) -> str | None:
    """The S3 error code of a botocore ``ClientError`` (``None`` for other errors)."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return None
    code = response.get("Error", {}).get("Code")
    return str(code) if code is not None else None
