"""An export as a sequence of parts, each finished by a marker written last: resumable.

The samples (:mod:`pipeline.exports.samples`) are cut into parts in their one order: a part
closes once what it wrote reaches ``--shard-mb``. Boundaries depend only on the run, the
filter and the options, so a rerun cuts the same parts. Each part's files are written
atomically, then its marker ``_parts/part-NNNNNN.json`` (``schemas/export_part.schema.json``)
with the cursors it began and ended at. On resume the markers in place, from part 0 on, say
where to go on: a part whose marker is missing is written again whole, to the same paths, so
nothing is lost or duplicated. ``export.json`` (``schemas/export.schema.json``) holds the
settings; resuming with other settings is refused.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from tqdm import tqdm

import schemas
from pipeline.errors import InputError
from pipeline.exports.samples import Cursor, Sample, SampleFailure, samples
from pipeline.exports.selection import Filter, RunLabels
from pipeline.formats.storage import Storage

EXPORT_RECORD = "export.json"
PARTS = "_parts"
EXPORT_FORMAT_VERSION = 1


def part_path(index: int) -> str:
    return f"{PARTS}/part-{index:06d}.json"


@dataclass(frozen=True, slots=True)
class ExportOptions:
    """What shapes an export besides its format and filter (the flags' defaults live here).

    Attributes:
        shard_mb: a part closes once it has written this many MB (10^6 bytes).
        val_fraction: mmseg: the share of images in ``val``, drawn per image id.
        seed: mmseg: the seed of that draw.
        image_url_prefix: labelstudio: the URL an image id is joined to.
    """

    shard_mb: float = 1000.0
    val_fraction: float = 0.1
    seed: int = 0
    image_url_prefix: str | None = None

    def check(self) -> None:
        if self.shard_mb <= 0:
            raise InputError(f"--shard-mb {self.shard_mb}: give a size in MB above 0")
        if not 0 <= self.val_fraction <= 1:
            raise InputError(f"--val-fraction {self.val_fraction}: give a share in [0, 1]")


@dataclass(frozen=True, slots=True)
class PartMarker:
    """A finished part: the cursors it began and ended at, what it holds, what it left out."""

    index: int
    start: Cursor
    end: Cursor
    samples: int
    bytes: int
    failures: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "start": self.start.to_json(), "end": self.end.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartMarker:
        schemas.validate(data, "export_part")
        return cls(
            **{**data, "start": Cursor(*data["start"]), "end": Cursor(*data["end"])},
        )


class Part(Protocol):
    """One part being written; its files appear when the part's context ends cleanly."""

    def add(self, sample: Sample) -> int:
        """Write ``sample``; return the bytes it added."""
        ...


class ExportFormat(Protocol):
    """One output format: parts, and the files written once every part is in place."""

    name: str
    needs_bytes: bool

    def check(self, run: RunLabels, options: ExportOptions) -> None:
        """:class:`InputError` for an export this format cannot make, before any work."""
        ...

    def part(
        self, storage: Storage, index: int, run: RunLabels, options: ExportOptions
    ) -> contextlib.AbstractContextManager[Part]: ...

    def finish(
        self, storage: Storage, run: RunLabels, markers: list[PartMarker], options: ExportOptions
    ) -> list[str]:
        """Write the closing files; return their paths relative to the destination."""
        ...


@dataclass(frozen=True, slots=True)
class ExportSummary:
    """What an export wrote (``resumed``: parts found finished and kept)."""

    dest: str
    samples: int
    failures: int
    parts: int
    resumed: int
    files: list[str]


def export(
    run: RunLabels,
    fmt: ExportFormat,
    dest: str,
    chosen: Filter,
    options: ExportOptions,
    progress: bool = True,
) -> ExportSummary:
    """Export ``run``'s selected samples to ``dest`` in ``fmt``, resuming a previous attempt.

    Raises:
        InputError: bad settings, or ``dest`` holds an export made with other settings.
    """
    run.check(chosen)
    options.check()
    fmt.check(run, options)
    storage = Storage(dest)
    record = _begin(storage, run, fmt, chosen, options)
    run.shards = list(record["shards"])
    markers = finished_parts(storage)
    resumed = len(markers)
    cursor = markers[-1].end if markers else Cursor(run.shards[0], 0)
    total = sum(run.count(shard, chosen) for shard in run.shards)
    done = sum(m.samples + len(m.failures) for m in markers)
    limit = options.shard_mb * 1e6
    stream = samples(run, chosen, cursor, fmt.needs_bytes)
    pending = next(stream, None)
    with tqdm(total=total, initial=done, unit="image", disable=not progress) as bar:
        while pending is not None:
            start, size, count, failures = cursor, 0, 0, []
            with fmt.part(storage, len(markers), run, options) as part:
                while pending is not None and size < limit:
                    cursor, item = pending
                    if isinstance(item, SampleFailure):
                        failures.append(item.to_json())
                    else:
                        size += part.add(item)
                        count += 1
                    bar.update(1)
                    pending = next(stream, None)
            marker = PartMarker(len(markers), start, cursor, count, size, failures)
            storage.write_atomic(part_path(marker.index), json.dumps(marker.to_json()).encode())
            markers.append(marker)
    files = fmt.finish(storage, run, markers, options)
    summary = ExportSummary(
        storage.root,
        sum(m.samples for m in markers),
        sum(len(m.failures) for m in markers),
        len(markers),
        resumed,
        files,
    )
    _end(storage, record, summary)
    return summary


def finished_parts(storage: Storage) -> list[PartMarker]:
    """The markers in place from part 0 on, up to the first gap (or break in the chain)."""
    found = set(storage.list(PARTS))
    markers: list[PartMarker] = []
    while part_path(len(markers)) in found:
        marker = PartMarker.from_json(json.loads(storage.read(part_path(len(markers)))))
        if markers and marker.start != markers[-1].end:
            break
        markers.append(marker)
    return markers


def _begin(
    storage: Storage, run: RunLabels, fmt: ExportFormat, chosen: Filter, options: ExportOptions
) -> dict[str, Any]:
    """``export.json`` as it stands: a new one, or the previous one if its settings match."""
    settings = {
        "format_version": EXPORT_FORMAT_VERSION,
        "format": fmt.name,
        "fingerprint": run.run.fingerprint,
        "filter": chosen.to_json(),
        "options": asdict(options),
    }
    if storage.exists(EXPORT_RECORD):
        previous: dict[str, Any] = json.loads(storage.read(EXPORT_RECORD))
        differing = sorted(k for k, v in settings.items() if previous.get(k) != v)
        if differing:
            raise InputError(
                f"{storage.uri(EXPORT_RECORD)} is an export made with other {', '.join(differing)} "
                f"({ {k: previous.get(k) for k in differing} }): give a fresh --to folder, or "
                "the same flags to resume it"
            )
        return previous
    record = {
        **settings,
        "output": run.output,
        "shards": list(run.shards),
        "categories": list(run.categories),
        "state": "running",
    }
    _write_record(storage, record)
    return record


def _end(storage: Storage, record: dict[str, Any], summary: ExportSummary) -> None:
    counts = {"samples": summary.samples, "failures": summary.failures, "parts": summary.parts}
    _write_record(storage, {**record, "state": "finished", "counts": counts})


def _write_record(storage: Storage, record: dict[str, Any]) -> None:
    schemas.validate(record, "export")
    storage.write_atomic(EXPORT_RECORD, json.dumps(record, indent=2).encode())
