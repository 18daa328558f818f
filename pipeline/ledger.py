"""The durable ledger: one small JSON file per shard under ``OUTPUT/ledger/``.

Only the coordinator writes it, atomically, after the shard file itself is in place; so a
shard whose ledger entry says ``done`` always has its output, and a crash between the two
writes is repaired on resume by reading the shard file back.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime

from pipeline.manifest import shard_name
from pipeline.storage import Storage

PENDING, DONE, FAILED = "pending", "done", "failed"


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """What the ledger knows of one shard."""

    shard: int
    state: str = PENDING
    attempts: int = 0
    images_done: int = 0
    images_failed: int = 0
    seconds: float = 0.0
    error: str | None = None
    traceback: str | None = None
    updated: str = ""


class Ledger:
    """Read and write per-shard entries in ``OUTPUT/ledger/``."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage

    @staticmethod
    def path(shard: int) -> str:
        return f"ledger/{shard_name(shard)}.json"

    def read_all(self) -> dict[int, ShardEntry]:
        entries = {}
        for relative in self._storage.list("ledger"):
            entry = ShardEntry(**json.loads(self._storage.read(relative)))
            entries[entry.shard] = entry
        return entries

    def write(self, entry: ShardEntry) -> ShardEntry:
        entry = replace(entry, updated=datetime.now(UTC).isoformat(timespec="seconds"))
        self._storage.write_atomic(
            self.path(entry.shard), json.dumps(asdict(entry), indent=1).encode()
        )
        return entry
