"""Shard plans: small descriptors cut from manifest metadata; workers read their own rows.

A shard is a range of rows of one manifest file, ``(file, start, count)``, with ``first_id``
(the COCO image id of its first row; its rows take the ids that follow) and ``digest`` (of its
image ids). Planning reads the files' footers and streams the ``image_id`` and ``uri`` columns
once, in batches: nulls and duplicates are found there (duplicates through 8 bytes a row), and
the digests computed.

A resumed run plans against the previous plan: its shards are kept where their rows are
unchanged, the rows no kept shard covers (a manifest that grew) get new shards, and a finished
shard whose rows changed is refused.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.formats.layout import label_file_name, label_name_keys, shard_name
from pipeline.planning.ids import RangeDigest, digest, is_string, row_hashes
from pipeline.planning.manifest import (
    MAX_LISTED,
    ImageRecord,
    Manifest,
    ManifestError,
    id_batches,
    read_range,
    rows_text,
)

Range = tuple[str, int, int]  # (file, start, count)


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of work: ``count`` rows of ``file`` from ``start``.

    Attributes:
        index: the shard's number, which names its files.
        file: the manifest file (a location :func:`pipeline.formats.storage.resolve` reads).
        start: first row, in the file.
        count: rows.
        first_id: COCO image id of the first row; row ``k`` gets ``first_id + k``.
        digest: sha256 of the rows' image ids (:mod:`pipeline.planning.ids`).
    """

    index: int
    file: str
    start: int
    count: int
    first_id: int
    digest: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass(frozen=True, slots=True)
class Plan:
    """The shards of a run, by index, and how many came from the previous plan."""

    shards: tuple[Shard, ...]
    rows: int
    kept: int = 0

    @property
    def images(self) -> int:
        return sum(s.count for s in self.shards)


def plan_shards(
    manifest: Manifest,
    shard_size: int,
    previous: Sequence[Shard] = (),
    finished: Iterable[int] = (),
    label_files: bool = False,
) -> Plan:
    """Validate the manifest's rows and cut them into shards.

    Args:
        manifest: from :func:`pipeline.planning.manifest.open_manifest`.
        shard_size: rows per new shard (a file's last shard may be shorter).
        previous: the plan of an earlier run into the same output, if any.
        finished: indices of its shards that are done.
        label_files: the run writes label maps: ids whose label files would share a name
            (:func:`pipeline.formats.layout.label_file_name`) are refused too.

    Raises:
        ManifestError: null or repeated ids or uris, ids sharing a label file, or rows that
            changed under a finished shard.
    """
    if shard_size < 1:
        raise ManifestError(f"shard_size must be >= 1, got {shard_size}.")
    done = set(finished)
    rows = {f.uri: f.rows for f in manifest.files}
    fits = [s.start + s.count <= rows.get(s.file, -1) for s in previous]
    candidates = [s for s, ok in zip(previous, fits, strict=True) if ok]
    gone = [s for s, ok in zip(previous, fits, strict=True) if not ok]
    _refuse_changed([s for s in gone if s.index in done], manifest)
    ranges = _ranges(manifest, candidates, shard_size)
    digests = _scan(manifest, ranges, label_files=label_files)
    same = [digests[(s.file, s.start, s.count)] == s.digest for s in candidates]
    kept = [s for s, ok in zip(candidates, same, strict=True) if ok]
    changed = [s for s, ok in zip(candidates, same, strict=True) if not ok]
    _refuse_changed([s for s in changed if s.index in done], manifest)
    if changed:  # rows changed under unfinished shards: plan them anew
        ranges = _ranges(manifest, kept, shard_size)
        files = {s.file for s in changed}
        digests.update(_scan(manifest, [r for r in ranges if r[0] in files], validate=False))
    return _number(kept, ranges, digests, previous, manifest.rows)


def read_shard(shard: Shard) -> tuple[ImageRecord, ...]:
    """The shard's rows, read by the worker; they must still be the rows that were planned.

    Raises:
        ManifestError: the rows' image ids changed since the run was planned.
    """
    table = read_range(shard.file, shard.start, shard.count)
    if table.num_rows != shard.count or digest(table["image_id"].combine_chunks()) != shard.digest:
        raise ManifestError(
            f"{shard.file} rows {shard.start}..{shard.start + shard.count} changed since the run "
            "was planned; a manifest must not change while a run reads it."
        )
    columns = {name: table[name].to_pylist() for name in table.column_names}
    none = [None] * table.num_rows
    return tuple(
        ImageRecord(
            shard.first_id + k,
            columns["image_id"][k],
            columns["uri"][k],
            columns.get("width", none)[k],
            columns.get("height", none)[k],
            columns.get("sha256", none)[k],
        )
        for k in range(table.num_rows)
    )


def _ranges(manifest: Manifest, kept: Sequence[Shard], shard_size: int) -> list[Range]:
    """Every range of the plan: the kept shards', and new ones over the rows they leave."""
    by_file: dict[str, list[Shard]] = defaultdict(list)
    for shard in kept:
        by_file[shard.file].append(shard)
    ranges: list[Range] = []
    for file in manifest.files:
        row = 0
        stops: list[Shard | None] = [*sorted(by_file[file.uri], key=lambda s: s.start), None]
        for stop in stops:  # new shards fill each gap before a kept shard, then the file's end
            end = file.rows if stop is None else stop.start
            ranges += [(file.uri, a, min(shard_size, end - a)) for a in range(row, end, shard_size)]
            if stop is not None:
                ranges.append((file.uri, stop.start, stop.count))
                row = stop.start + stop.count
    return ranges


def _number(
    kept: Sequence[Shard],
    ranges: Sequence[Range],
    digests: Mapping[Range, str],
    previous: Sequence[Shard],
    rows: int,
) -> Plan:
    """Kept shards keep their index and ids; new ones take the next free ones, in row order."""
    by_range = {(s.file, s.start, s.count): s for s in kept}
    index = max((s.index + 1 for s in previous), default=0)
    first_id = max((s.first_id + s.count for s in previous), default=0)
    shards = []
    for file, start, count in ranges:
        shard = by_range.get((file, start, count))
        if shard is None:
            shard = Shard(index, file, start, count, first_id, digests[(file, start, count)])
            index, first_id = index + 1, first_id + count
        shards.append(shard)
    return Plan(tuple(sorted(shards, key=lambda s: s.index)), rows, kept=len(kept))


def _scan(
    manifest: Manifest, ranges: Sequence[Range], validate: bool = True, label_files: bool = False
) -> dict[Range, str]:
    """One streaming pass: the digest of every range; with ``validate``, nulls and duplicates
    (of ids, and with ``label_files`` of their label file names).

    Memory: one batch of rows, a digest per range, and (validating) 8 bytes a row of hashes
    (16 with ``label_files``).
    """
    by_file: dict[str, list[Range]] = defaultdict(list)
    for r in ranges:
        by_file[r[0]].append(r)
    digests: dict[Range, str] = {}
    hashes: list[np.ndarray] = []
    label_hashes: list[np.ndarray] = []
    nulls: dict[str, list[int]] = {"image_id": [], "uri": []}  # the first few rows
    null_counts = {"image_id": 0, "uri": 0}
    base = 0
    for file in manifest.files:
        if not validate and file.uri not in by_file:
            base += file.rows
            continue
        builders = {r: RangeDigest() for r in by_file[file.uri]}
        for row, ids, uris in id_batches(file):
            for name, column in (("image_id", ids), ("uri", uris)):
                if column.null_count:
                    where = np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))
                    nulls[name] += (base + row + where[:MAX_LISTED]).tolist()
                    null_counts[name] += column.null_count
            if validate and not ids.null_count:
                hashes.append(row_hashes(ids))
                if label_files and is_string(ids):  # integer ids name distinct files
                    label_hashes.append(row_hashes(label_name_keys(ids)))
            for r, builder in builders.items():
                lo, hi = max(r[1], row), min(r[1] + r[2], row + len(ids))
                if lo < hi:
                    builder.update(ids.slice(lo - row, hi - lo))
        digests.update({r: b.hexdigest() for r, b in builders.items()})
        base += file.rows
    for name, null_rows in nulls.items():
        if null_rows:
            raise ManifestError(
                f"{manifest.location}: {name} is null in row(s) "
                f"{rows_text(null_rows, null_counts[name])}; every row needs one."
            )
    if validate and hashes:
        repeated, rows = _repeats(manifest, np.concatenate(hashes), row_hashes, lambda i: i)
        if repeated:
            raise ManifestError(
                f"{manifest.location}: {len(repeated)} image_id value(s) repeat, e.g. {repeated} "
                f"in rows {rows_text(rows)}; image ids must be unique."
            )
    if validate and label_hashes:
        repeated, rows = _repeats(
            manifest,
            np.concatenate(label_hashes),
            lambda ids: row_hashes(label_name_keys(ids)),
            label_file_name,
        )
        if repeated:
            raise ManifestError(
                f"{manifest.location}: {len(repeated)} label file name(s) would hold several "
                f"images, e.g. labels/{repeated[0]} for rows {rows_text(rows)} (label maps keep "
                "the id's path with its image suffix swapped for .png, and characters such as "
                "':' made '_'). Rename those ids, or label without --png-labels."
            )
    return digests


def _repeats(
    manifest: Manifest,
    hashes: np.ndarray,
    hash_of: Callable[[pa.Array], np.ndarray],
    key_of: Callable[[Any], Any],
) -> tuple[list[Any], list[int]]:
    """Keys shared by several rows, found from 64-bit row hashes and confirmed on the keys.

    Args:
        hashes: ``N`` uint64, ``hash_of`` of every row's id, in manifest order.
        hash_of: ids -> their hashes (the second pass recomputes them, batch by batch).
        key_of: an id -> its exact key (two rows collide when their keys are equal).

    Returns:
        Up to ``MAX_LISTED`` repeated keys, and the manifest rows that hold them, sorted.
    """
    ordered = np.sort(hashes)
    suspects = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(suspects):
        return [], []
    rows_of: dict[Any, list[int]] = defaultdict(list)
    base = 0
    for file in manifest.files:  # a second pass, over the few suspect rows only
        for row, ids, _ in id_batches(file):
            where = np.flatnonzero(np.isin(hash_of(ids), suspects))
            for k in where.tolist():
                rows_of[key_of(ids[k].as_py())].append(base + row + k)
        base += file.rows
    repeated = [key for key, rows in rows_of.items() if len(rows) > 1][:MAX_LISTED]
    return repeated, sorted(r for key in repeated for r in rows_of[key])


def _refuse_changed(shards: Sequence[Shard], manifest: Manifest) -> None:
    if shards:
        first = shards[0]
        raise ManifestError(
            f"{manifest.location}: the rows of {len(shards)} finished shard(s) changed since they "
            f"were labelled, e.g. {first.name} ({first.file} rows {first.start}.."
            f"{first.start + first.count}). Appending rows or files is fine; changing or removing "
            "labelled ones is not: label into a new --output."
        )
