"""The durable ledger: one small JSON file per shard under ``OUTPUT/ledger/``.

Only the coordinator writes it, atomically, after the shard file itself is in place; so a
shard whose ledger entry says ``done`` always has its output, and a crash between the two
writes is repaired on resume by reading the shard file back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

from pipeline.formats.layout import LEDGER, ledger_path
from pipeline.formats.storage import Storage

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """What the ledger knows of one shard.

    Attributes:
        attempts: attempts started (one given back when a shard was only interrupted).
        retries: retried attempts by cause: ``died`` (worker lost), ``oom``, ``timeout``.
        error: the last error, as ``"Class: message"``.
        traceback: the traceback of a failed shard, when there is one.
    """

    shard: int
    state: str = PENDING
    attempts: int = 0
    images_done: int = 0
    images_failed: int = 0
    seconds: float = 0.0
    retries: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None
    updated: str = ""


class Ledger:
    """Read and write per-shard entries in ``OUTPUT/ledger/``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    def read_all(self) -> dict[int, ShardEntry]:
        entries = {}
        for relative in self._storage.list(LEDGER):
            entry = ShardEntry(**json.loads(self._storage.read(relative)))
            entries[entry.shard] = entry
        return entries

    def write(self, entry: ShardEntry) -> ShardEntry:
        entry = replace(entry, updated=datetime.now(UTC).isoformat(timespec="seconds"))
        self._storage.write_atomic(
            ledger_path(entry.shard), json.dumps(asdict(entry), indent=1).encode()
        )
        return entry
