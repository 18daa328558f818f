"""``run.json``: what a run states about itself, typed for its readers.

The coordinator writes the record (``schemas/run.schema.json``) when a run starts and ends;
``jobs.status``, the report, FiftyOne and resume read it through :func:`read_run` or
:func:`require_run`, so "is this a gclip-label output" and "which method settings did it
use" are answered in one place.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import schemas
from pipeline.errors import DamagedFileError, InputError
from pipeline.formats.layout import RUN
from pipeline.formats.storage import Storage


class RunState(StrEnum):
    """``run.json``'s ``state``: ``running`` until the driver ends (or is killed)."""

    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class RunRecord(Mapping[str, Any]):
    """``run.json`` as written, with typed views of the facts its readers ask for.

    It is also the mapping itself (``record["config"]``), for readers of other fields.
    """

    data: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def state(self) -> RunState:
        return RunState(self.data["state"])

    @property
    def config(self) -> dict[str, Any]:
        """The settings as given (``RunConfig.to_json``)."""
        config: dict[str, Any] = self.data["config"]
        return config

    @property
    def method(self) -> dict[str, Any]:
        """The method's options as resolved on the model (global blocks fixed), else as given
        (a run that failed before resolving)."""
        method: dict[str, Any] = (
            self.data.get("resolved", {}).get("method") or self.config["method"]
        )
        return method

    @property
    def fingerprint(self) -> str | None:
        return self.data.get("fingerprint")

    @property
    def format_version(self) -> int:
        """The output format (runs before versioning wrote format 1)."""
        return int(self.data.get("format_version", 1))

    @property
    def weights(self) -> str | None:
        """What the run recorded as the weights it used (name, digest), when it resolved them."""
        model = self.data.get("resolved", {}).get("model", {})
        return model.get("weights") or model.get("weights_sha256")


def read_run(storage: Storage) -> RunRecord | None:
    """The output's ``run.json``, or ``None`` if it has none.

    Raises:
        DamagedFileError: the file is there but is not a run record.
    """
    if not storage.exists(RUN):
        return None
    try:
        data = json.loads(storage.read(RUN))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedFileError(storage.uri(RUN), f"not JSON: {err}", _FIX) from None
    if not isinstance(data, dict) or not {"state", "config"} <= data.keys():
        raise DamagedFileError(storage.uri(RUN), "not a run record", _FIX)
    return RunRecord(data)


def require_run(storage: Storage) -> RunRecord:
    """The output's ``run.json``; :class:`InputError` naming the fix if it has none."""
    run = read_run(storage)
    if run is None:
        raise InputError(
            f"{storage.root} holds no {RUN}: not a gclip-label output. Give the --output "
            "folder of a `python -m jobs.label` run."
        )
    return run


def write_run(storage: Storage, run: Mapping[str, Any]) -> None:
    """Validate and write ``run.json`` atomically."""
    schemas.validate(dict(run), "run")
    storage.write_atomic(RUN, json.dumps(run, indent=2, default=str).encode())


_FIX = (
    "Move it aside and run the same jobs.label command again: the shards' markers and ledger "
    "still hold the run's progress."
)
