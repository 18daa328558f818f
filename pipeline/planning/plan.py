"""Shard plans: small descriptors cut from manifest metadata; workers read their own rows.

A shard is a range of rows of one manifest file, ``(file, start, count)``, with ``first_id``
(the COCO image id of its first row; its rows take the ids that follow) and ``digest`` (of its
image ids). Planning reads the files' footers and streams the ``image_id`` and ``uri`` columns
once, in batches: nulls, empty strings and duplicates are found there (duplicates through 8
bytes a row), with label maps also ids whose label paths collide (two ids, one file; or one
id's file another's folder), and the digests computed. Workers resolve a relative ``uri``
against its manifest file's folder (:func:`pipeline.planning.manifest.row_uri`).

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
import pyarrow.compute as pc

from pipeline.formats.descriptors import ImageRecord, Shard
from pipeline.formats.layout import label_file_name, label_name_keys
from pipeline.planning.ids import (
    RangeDigest,
    digest,
    is_string,
    prefix_hashes,
    prefixes_before,
    row_hashes,
)
from pipeline.planning.manifest import (
    MAX_LISTED,
    Manifest,
    ManifestError,
    id_batches,
    ids_at,
    read_range,
    row_uri,
    rows_text,
)

Range = tuple[str, int, int]  # (file, start, count)


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
            (:func:`pipeline.formats.layout.label_file_name`), or whose label file would be
            another id's label folder, are refused too.

    Raises:
        ManifestError: null or empty ids or uris, repeated ids, colliding label paths, or
            rows that changed under a finished shard.
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

    A relative ``uri`` comes back resolved against the shard's manifest file's folder
    (:func:`pipeline.planning.manifest.row_uri`).

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
            row_uri(columns["uri"][k], shard.file),
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
    """One streaming pass: the digest of every range; with ``validate``, nulls, empty
    strings and duplicates (of ids, and with ``label_files`` of their label paths).

    Memory: one batch of rows, a digest per range, and (validating) 8 bytes a row of hashes
    (16 with ``label_files``, plus 16 a folder named like a label file).
    """
    by_file: dict[str, list[Range]] = defaultdict(list)
    for r in ranges:
        by_file[r[0]].append(r)
    digests: dict[Range, str] = {}
    checks = _Checks(manifest)
    base = 0
    for file in manifest.files:
        if not validate and file.uri not in by_file:
            base += file.rows
            continue
        builders = {r: RangeDigest() for r in by_file[file.uri]}
        for row, ids, uris in id_batches(file):
            checks.missing(base + row, ids, uris)
            if validate and not ids.null_count:
                checks.add(base + row, ids, label_files)
            for r, builder in builders.items():
                lo, hi = max(r[1], row), min(r[1] + r[2], row + len(ids))
                if lo < hi:
                    builder.update(ids.slice(lo - row, hi - lo))
        digests.update({r: b.hexdigest() for r, b in builders.items()})
        base += file.rows
    checks.refuse_missing()
    if validate:
        checks.refuse_repeats()
    return digests


class _Checks:
    """What one pass over the ids finds, then refused with the rows named."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        # (column, "null" or "empty") -> the first few rows, and how many rows in all
        self.rows: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)
        self.hashes: list[np.ndarray] = []  # per row: of the id
        self.label_hashes: list[np.ndarray] = []  # per row: of its label path's key
        self.folder_hashes: list[np.ndarray] = []  # per label folder named like a label file
        self.folder_rows: list[np.ndarray] = []  # the row of each of them

    def missing(self, first: int, ids: pa.Array, uris: pa.Array) -> None:
        """Note the rows (``first`` is the batch's) whose id or uri is null or ``''``."""
        for name, column in (("image_id", ids), ("uri", uris)):
            masks: dict[str, pa.Array] = {}
            if column.null_count:
                masks["null"] = column.is_null()
            if is_string(column):  # a null's length is null: not empty
                masks["empty ('')"] = pc.fill_null(pc.equal(pc.binary_length(column), 0), False)
            for kind, mask in masks.items():
                where = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
                self.rows[(name, kind)] += (first + where[:MAX_LISTED]).tolist()
                self.counts[(name, kind)] += len(where)

    def add(self, first: int, ids: pa.Array, label_files: bool) -> None:
        """Hash a batch of ids (no nulls), and with ``label_files`` their label paths."""
        self.hashes.append(row_hashes(ids))
        if label_files and is_string(ids):  # integer ids name distinct files, in no folder
            keys = label_name_keys(ids)
            self.label_hashes.append(row_hashes(keys))
            # labels/x.png is the file of key "x", and a folder of keys "x.png/...": such a
            # folder's key prefix is the file's key.
            rows, lengths = prefixes_before(keys, b".png/")
            if len(rows):  # rare: the running sums cost 8 bytes a byte of the batch's ids
                self.folder_hashes.append(prefix_hashes(keys, rows, lengths))
                self.folder_rows.append(first + rows)

    def refuse_missing(self) -> None:
        for (name, kind), rows in self.rows.items():
            if rows:
                shown = rows_text(rows, self.counts[(name, kind)])
                raise ManifestError(
                    f"{self.manifest.location}: {name} is {kind} in row(s) {shown}; every row "
                    f"needs a non-empty {name}."
                )

    def refuse_repeats(self) -> None:
        where = self.manifest.location
        if self.hashes:
            repeated, rows = _repeats(self.manifest, np.concatenate(self.hashes), lambda i: i)
            if repeated:
                raise ManifestError(
                    f"{where}: {len(repeated)} image_id value(s) repeat, e.g. {repeated} "
                    f"in rows {rows_text(rows)}; image ids must be unique."
                )
        if not self.label_hashes:
            return
        label_hashes = np.concatenate(self.label_hashes)
        repeated, rows = _repeats(self.manifest, label_hashes, label_file_name)
        if repeated:
            raise ManifestError(
                f"{where}: {len(repeated)} label file name(s) would hold several "
                f"images, e.g. labels/{repeated[0]} for rows {rows_text(rows)} (label maps keep "
                "the id's path with its image suffix swapped for .png, and characters such as "
                "':' made '_'). Rename those ids, or label without --png-labels."
            )
        if not self.folder_hashes:
            return
        clashes = _file_folder_clashes(
            self.manifest,
            label_hashes,
            np.concatenate(self.folder_hashes),
            np.concatenate(self.folder_rows),
        )
        if clashes:
            shown = "; ".join(
                f"labels/{name} is row {f}'s label file (image_id {fid!r}) and a folder of "
                f"row {d}'s (image_id {did!r})"
                for name, (f, fid), (d, did) in clashes
            )
            raise ManifestError(
                f"{where}: label paths would be both a file and a folder: {shown}. Label maps "
                "keep the id's path with its image suffix swapped for .png, so an id's label "
                "file cannot also be another id's folder. Rename those ids, or label without "
                "--png-labels."
            )


def _repeats(
    manifest: Manifest, hashes: np.ndarray, key_of: Callable[[Any], Any]
) -> tuple[list[Any], list[int]]:
    """Keys shared by several rows, found from 64-bit row hashes and confirmed on the keys.

    Args:
        hashes: ``N`` uint64, a hash of every row's key, in manifest order.
        key_of: an id -> its exact key (two rows collide when their keys are equal).

    Returns:
        Up to ``MAX_LISTED`` repeated keys, and the manifest rows that hold them, sorted.
    """
    ordered = np.sort(hashes)
    suspects = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(suspects):
        return [], []
    rows_of: dict[Any, list[int]] = defaultdict(list)
    for row, image_id in ids_at(manifest, np.flatnonzero(np.isin(hashes, suspects))):
        rows_of[key_of(image_id)].append(row)
    repeated = [key for key, rows in rows_of.items() if len(rows) > 1][:MAX_LISTED]
    return repeated, sorted(r for key in repeated for r in rows_of[key])


Clash = tuple[str, tuple[int, str], tuple[int, str]]  # label path, (row, id) of file, of folder


def _file_folder_clashes(
    manifest: Manifest, label_hashes: np.ndarray, folder_hashes: np.ndarray, folder_rows: np.ndarray
) -> list[Clash]:
    """Label files that are also another id's folder, from hashes, confirmed on the names.

    Args:
        label_hashes: ``N`` uint64, of every row's label key, in manifest order.
        folder_hashes: ``F`` uint64, of the key prefixes before each ``.png/`` in a key.
        folder_rows: ``F`` int64, the row of each.

    Returns:
        Up to ``MAX_LISTED`` clashes, each: the label path, and ``(row, image_id)`` of the
        file's id and of one id with a folder of that name.
    """
    suspect = np.isin(folder_hashes, label_hashes)
    if not suspect.any():
        return []
    files = {
        label_file_name(image_id): (row, image_id)
        for row, image_id in ids_at(
            manifest, np.flatnonzero(np.isin(label_hashes, folder_hashes[suspect]))
        )
    }
    clashes: list[Clash] = []
    for row, image_id in ids_at(manifest, np.unique(folder_rows[suspect])):
        parts = label_file_name(image_id).split("/")[:-1]  # a hashed name has no folder
        for name in ("/".join(parts[: k + 1]) for k in range(len(parts))):
            if name in files and len(clashes) < MAX_LISTED:
                clashes.append((name, files[name], (row, image_id)))
        if len(clashes) == MAX_LISTED:
            break
    return clashes


def _refuse_changed(shards: Sequence[Shard], manifest: Manifest) -> None:
    if shards:
        first = shards[0]
        raise ManifestError(
            f"{manifest.location}: the rows of {len(shards)} finished shard(s) changed since they "
            f"were labelled, e.g. {first.name} ({first.file} rows {first.start}.."
            f"{first.start + first.count}). Appending rows or files is fine; changing or removing "
            "labelled ones is not: label into a new --output."
        )
