"""A lease on an output folder: while a driver writes a run there, no other driver does.

The lease is ``OUTPUT/lease.json``: its owner (host, pid, a random token, start time, command)
and a heartbeat time that the owner refreshes every ``heartbeat_every_s``. It is made with an
atomic create-if-absent, so of two drivers started at once exactly one gets it; the other
stops with :class:`LeaseHeldError` (an :class:`~pipeline.errors.InputError`: exit 2) naming
the holder. A lease whose heartbeat is older than its ``timeout_s`` is stale (its driver was
killed, or its host vanished) and is taken over with a compare-and-swap, so of two drivers
taking over at once exactly one wins.

The lease is a run's while the file holds that run's token; every write checks it first. Ages
compare wall clocks of different hosts, so they assume clocks agree to a few seconds, far
below the default timeout of 120 s.

Usage by a driver::

    with acquire(storage, Owner.here(command)) as lease:  # heartbeats until the block ends
        ...
        lease.ensure_held()  # before writing what only the owner may write
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shlex
import socket
import sys
import threading
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import schemas
from pipeline.errors import InputError, describe
from pipeline.formats.storage import Storage

log = logging.getLogger(__name__)

LEASE = "lease.json"
LEASE_FORMAT = 1
DEFAULT_TIMEOUT_S = 120.0
HEARTBEATS_PER_TIMEOUT = 6  # heartbeat every 20 s by default: five may fail before it goes stale
_COMMAND_CHARS = 500
_ATTEMPTS = 5  # rounds of create / read / take over while the file keeps changing under us


class LeaseHeldError(InputError):
    """Another driver holds a live lease on the output folder.

    Attributes:
        holder: the lease as read, with its owner and last heartbeat.
    """

    def __init__(self, holder: LeaseInfo, where: str) -> None:
        owner = holder.owner
        age = holder.heartbeat_age_s()
        super().__init__(
            f"{where} is held by another run: host {owner.host}, pid {owner.pid}, started "
            f"{_iso(owner.started)}, last heartbeat {age:.0f} s ago (command: {owner.command}). "
            "Two drivers writing one output folder would mix their settings. Wait for it to "
            "finish, or if that driver is gone, it is taken over automatically after "
            f"{holder.timeout_s:.0f} s without a heartbeat (in about "
            f"{max(0.0, holder.timeout_s - age):.0f} s); or write to another --output."
        )
        self.holder = holder
        self.where = where

    def __reduce__(self) -> tuple[type[LeaseHeldError], tuple[LeaseInfo, str]]:
        return LeaseHeldError, (self.holder, self.where)


class LeaseLostError(RuntimeError):
    """This run's lease was taken over by another driver (it went without heartbeats for longer
    than its timeout, e.g. a paused process or a storage outage)."""


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds a lease: the driver process and its run."""

    host: str
    pid: int
    token: str  # 32 hex digits, random per run
    started: datetime  # UTC
    command: str

    @classmethod
    def here(cls, command: str | None = None) -> Owner:
        """This process, a fresh token, now; ``command`` defaults to ``sys.argv``, shortened."""
        text = command if command is not None else shlex.join(sys.argv)
        if len(text) > _COMMAND_CHARS:
            text = text[: _COMMAND_CHARS - 3] + "..."
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(16), _now(), text)


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    """The contents of ``lease.json``."""

    owner: Owner
    heartbeat: datetime  # UTC, the owner's last refresh
    timeout_s: float  # stale after this long without a heartbeat
    heartbeat_every_s: float

    def heartbeat_age_s(self, now: datetime | None = None) -> float:
        """Seconds since the last heartbeat (by this host's clock; never negative)."""
        return max(0.0, ((now or _now()) - self.heartbeat).total_seconds())

    def is_stale(self, now: datetime | None = None) -> bool:
        """Whether the owner is gone: no heartbeat for longer than ``timeout_s``, or (on this
        host) its process no longer exists, as after a ``kill -9``."""
        return self.heartbeat_age_s(now) > self.timeout_s or self.owner_exited()

    def owner_exited(self) -> bool:
        """The owner ran on this host and its process is gone (a reused pid reads as alive:
        the lease then waits for its timeout, the safe side)."""
        if self.owner.host != socket.gethostname():
            return False
        try:
            os.kill(self.owner.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self, now: datetime | None = None) -> str:
        """One line for ``jobs.status``: who holds the folder, and whether its driver lives."""
        owner, age = self.owner, self.heartbeat_age_s(now)
        who = f"host {owner.host}, pid {owner.pid}, started {_iso(owner.started)}"
        if self.owner_exited():
            return f"driver gone (its process exited; {who}): the next run takes over"
        if self.is_stale(now):
            return f"driver gone (no heartbeat for {age:.0f} s; {who}): the next run takes over"
        return f"held by a running driver ({who}; last heartbeat {age:.0f} s ago)"

    def to_json(self) -> dict[str, Any]:
        owner = self.owner
        return {
            "format": LEASE_FORMAT,
            "host": owner.host,
            "pid": owner.pid,
            "token": owner.token,
            "started": _iso(owner.started),
            "command": owner.command,
            "heartbeat": _iso(self.heartbeat),
            "timeout_s": self.timeout_s,
            "heartbeat_every_s": self.heartbeat_every_s,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LeaseInfo:
        """The lease in ``obj``; raises :class:`schemas.SchemaError` if it is not one."""
        schemas.validate(obj, "lease")
        owner = Owner(
            obj["host"],
            obj["pid"],
            obj["token"],
            datetime.fromisoformat(obj["started"]),
            obj["command"],
        )
        heartbeat = datetime.fromisoformat(obj["heartbeat"])
        return cls(owner, heartbeat, float(obj["timeout_s"]), float(obj["heartbeat_every_s"]))

    def encode(self) -> bytes:
        """The file's bytes: sorted JSON, validated against ``schemas/lease.schema.json``."""
        obj = self.to_json()
        schemas.validate(obj, "lease")
        return json.dumps(obj, sort_keys=True, indent=2).encode() + b"\n"


class Lease:
    """A held lease: refresh it (:meth:`heartbeat` starts a thread that does), then release it.

    As a context manager it heartbeats for the block and releases at its end.
    """

    def __init__(self, storage: Storage, info: LeaseInfo) -> None:
        self.storage = storage
        self._info = info
        self._lock = threading.Lock()  # one refresh at a time: the thread's or a caller's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @property
    def info(self) -> LeaseInfo:
        """The lease as last written by this run."""
        return self._info

    @property
    def lost(self) -> bool:
        """Whether another driver has taken this lease over (or it was deleted)."""
        return self._lost

    def ensure_held(self) -> None:
        """Raise :class:`LeaseLostError` if the lease is no longer this run's."""
        if self._lost:
            raise LeaseLostError(
                f"{self.storage.uri(LEASE)} was taken over by another driver after this run "
                f"went {self._info.timeout_s:.0f} s without a heartbeat; this run stops so the "
                "two do not mix their outputs"
            )

    def verify(self) -> None:
        """Raise :class:`LeaseLostError` unless the lease file still holds this run's token
        (one read: what the driver asks before each write of the ledger and ``run.json``)."""
        if not self._lost:
            current = self.storage.read_versioned(LEASE)
            if current is None or _token(current.data) != self._info.owner.token:
                self._lose(current.data if current else None)
        self.ensure_held()

    def refresh(self) -> bool:
        """Write a new heartbeat now: ``True`` if written, ``False`` if the lease is no longer
        ours (then :attr:`lost` is set). Storage errors propagate."""
        with self._lock:
            for _ in range(_ATTEMPTS):
                if self._lost:
                    return False
                current = self.storage.read_versioned(LEASE)
                if current is None or _token(current.data) != self._info.owner.token:
                    self._lose(current.data if current else None)
                    return False
                info = replace(self._info, heartbeat=_now())
                if self.storage.replace_if_unchanged(LEASE, info.encode(), current.version):
                    self._info = info
                    return True
                # Changed between the read and the write: read again whose it is now (a retried
                # write of ours whose first answer was lost also lands here).
            raise OSError(f"{self.storage.uri(LEASE)} kept changing during a heartbeat")

    def heartbeat(self) -> Lease:
        """Start a daemon thread refreshing the lease every ``heartbeat_every_s`` (idempotent).

        Storage errors are logged and tried again at the next beat, never raised; the thread
        ends when the lease is lost or released.
        """
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._beat, name=f"lease-heartbeat-{self._info.owner.token[:8]}", daemon=True
            )
            self._thread.start()
        return self

    def release(self) -> bool:
        """Stop heartbeats and delete the lease if it is still ours: ``True`` if deleted.

        Never raises on storage errors (logged: the lease then goes stale and is taken over).
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            try:
                current = self.storage.read_versioned(LEASE)
                if current is None or _token(current.data) != self._info.owner.token:
                    return False  # taken over, or gone: not ours to delete
                return self.storage.delete_if_unchanged(LEASE, current.version)
            except Exception as err:
                log.warning(
                    "could not release %s (%s); it is taken over after %.0f s without a heartbeat",
                    self.storage.uri(LEASE),
                    describe(err),
                    self._info.timeout_s,
                )
                return False

    def __enter__(self) -> Lease:
        return self.heartbeat()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()

    def _beat(self) -> None:
        every = self._info.heartbeat_every_s
        while not self._stop.wait(every):
            try:
                if not self.refresh():
                    return
            except Exception as err:
                age = self._info.heartbeat_age_s()
                log.warning(
                    "heartbeat of %s failed (%s); last one %.0f s ago, stale after %.0f s; "
                    "trying again in %.0f s",
                    self.storage.uri(LEASE),
                    describe(err),
                    age,
                    self._info.timeout_s,
                    every,
                )

    def _lose(self, data: bytes | None) -> None:
        self._lost = True
        holder = _parse(data) if data is not None else None
        by = f"host {holder.owner.host}, pid {holder.owner.pid}" if holder else "nobody"
        log.error(
            "lost the lease on %s: now held by %s; this run's writes are no longer protected",
            self.storage.uri(LEASE),
            by,
        )


def acquire(
    storage: Storage,
    owner: Owner,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    heartbeat_every_s: float | None = None,
) -> Lease:
    """Take the lease on ``storage``'s folder for ``owner``, or take over a stale one.

    The returned lease does not heartbeat yet: use it as a context manager, or call
    :meth:`Lease.heartbeat` and later :meth:`Lease.release`.

    Args:
        storage: the output folder.
        owner: this driver; :meth:`Owner.here` makes one.
        timeout_s: how long this run's lease may go without a heartbeat before another
            driver may take it over (> 0).
        heartbeat_every_s: how often to refresh it; ``timeout_s / 6`` when not given.

    Raises:
        LeaseHeldError: another driver holds a lease that is not stale.
        InputError: ``lease.json`` is there but is not a lease.
    """
    every = (
        heartbeat_every_s if heartbeat_every_s is not None else timeout_s / HEARTBEATS_PER_TIMEOUT
    )
    if not 0 < every < timeout_s:
        raise ValueError(f"need 0 < heartbeat_every_s ({every}) < timeout_s ({timeout_s})")
    where = storage.uri(LEASE)
    holder: LeaseInfo | None = None
    for _ in range(_ATTEMPTS):
        info = LeaseInfo(owner, _now(), float(timeout_s), float(every))
        if storage.create_exclusive(LEASE, info.encode()):
            return Lease(storage, info)
        current = storage.read_versioned(LEASE)
        if current is None:
            continue  # released between the two steps: try creating again
        holder = _decode(current.data, where)
        if holder.owner.token == owner.token:
            return Lease(storage, holder)  # our own create, retried after its answer was lost
        if not holder.is_stale():
            raise LeaseHeldError(holder, where)
        if storage.replace_if_unchanged(LEASE, info.encode(), current.version):
            log.warning(
                "took over the stale lease on %s from host %s, pid %s (started %s): its "
                "process exited, or no heartbeat for %.0f s",
                where,
                holder.owner.host,
                holder.owner.pid,
                _iso(holder.owner.started),
                holder.heartbeat_age_s(),
            )
            return Lease(storage, info)
        # Another driver took it over first (or the holder came back): look again.
    if holder is not None:
        raise LeaseHeldError(holder, where)
    raise OSError(f"{where} kept changing while this run tried to take it; try again")


def read_lease(storage: Storage) -> LeaseInfo | None:
    """The lease on ``storage``'s folder, or ``None`` if no run holds one.

    Raises:
        InputError: ``lease.json`` is there but is not a lease.
    """
    try:
        data = storage.read(LEASE)
    except FileNotFoundError:
        return None
    return _decode(data, storage.uri(LEASE))


def _decode(data: bytes, where: str) -> LeaseInfo:
    try:
        return LeaseInfo.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError) as err:  # SchemaError and JSONDecodeError too
        raise InputError(
            f"{where} is not a lease this version of gclip-label wrote ({err}); if no run "
            "is writing to this folder, delete the file"
        ) from err


def _parse(data: bytes) -> LeaseInfo | None:
    try:
        return LeaseInfo.from_json(json.loads(data))
    except (ValueError, KeyError, TypeError):
        return None


def _token(data: bytes) -> str | None:
    """The owner token in a lease file's bytes (``None`` if they are not a lease)."""
    holder = _parse(data)
    return holder.owner.token if holder else None


def _now() -> datetime:
    """UTC now, to the millisecond that the file keeps (so a read lease equals the written)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")
