"""Shard plans: small descriptors cut from manifest metadata; workers read their own rows.

A shard is a range of rows of one manifest file, ``(file, start, count)``, with ``first_id``
(the COCO image id of its first row; its rows take the ids that follow) and ``digest`` (of its
image ids). Planning reads the files' footers and streams the ``image_id`` and ``uri`` columns
once, in batches: nulls and empty strings are found there, shards are cut and their digests
computed as the rows go by, and every row's id hash (with label maps, its label path's too)
goes to an out-of-core store (:mod:`pipeline.planning.repeats`, DuckDB under a memory limit)
that finds repeated ids and colliding label paths (two ids, one file; or one id's file
another's folder) once the pass is over. The plan is a :class:`ShardTable` of columns, not a
list of objects. Memory is bounded whatever the manifest's size: a batch of rows, DuckDB's
limit, and some 70 bytes a shard.

New shards are ``shard_size`` rows, but a shard never crosses from one tar file to another
(rows whose ``uri`` is a tar member, ``x.tar#member``, see
:func:`pipeline.planning.manifest.tar_keys`), nor between a tar's rows and other rows: each
tar's rows are cut from its first. A manifest without tar members plans as fixed ranges of
``shard_size`` rows per file, as before. Kept shards of a previous plan keep their ranges.

Workers resolve a relative ``uri`` against its manifest file's folder
(:func:`pipeline.planning.manifest.row_uri`).

A resumed run plans against the previous plan: its shards are kept where their rows are
unchanged, the rows no kept shard covers (a manifest that grew) get new shards, and a finished
shard whose rows changed is refused.
"""

from __future__ import annotations

from array import array
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.formats.descriptors import ImageRecord, Shard
from pipeline.formats.layout import label_file_name, label_name_keys
from pipeline.planning.ids import (
    IdBatch,
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
    tar_keys,
)
from pipeline.planning.repeats import HashStore, Scratch
from pipeline.planning.shard_table import ShardTable


@dataclass(frozen=True, slots=True)
class Plan:
    """The shards of a run, by index (a ``Sequence[Shard]`` of columns), and how many came
    from the previous plan."""

    shards: ShardTable
    rows: int
    kept: int = 0

    @property
    def images(self) -> int:
        return self.shards.images


def plan_shards(
    manifest: Manifest,
    shard_size: int,
    previous: Sequence[Shard] = (),
    finished: Iterable[int] = (),
    label_files: bool = False,
    scratch: Scratch | None = None,
) -> Plan:
    """Validate the manifest's rows and cut them into shards.

    Args:
        manifest: from :func:`pipeline.planning.manifest.open_manifest`.
        shard_size: rows per new shard (shorter at a file's end, a kept shard, or a change
            of tar file).
        previous: the plan of an earlier run into the same output, if any (shards, or a
            :class:`ShardTable`).
        finished: indices of its shards that are done.
        label_files: the run writes label maps: ids whose label files would share a name
            (:func:`pipeline.formats.layout.label_file_name`), or whose label file would be
            another id's label folder, are refused too.
        scratch: where and in how much memory the duplicate checks spill.

    Raises:
        ManifestError: null or empty ids or uris, repeated ids, colliding label paths, or
            rows that changed under a finished shard.
    """
    if shard_size < 1:
        raise ManifestError(f"shard_size must be >= 1, got {shard_size}.")
    names = [f.uri for f in manifest.files]
    old = previous if isinstance(previous, ShardTable) else ShardTable.from_shards(previous, names)
    old = _on_files(old, names)
    done = np.isin(old.shard, np.fromiter(finished, np.int64))
    rows = np.array([f.rows for f in manifest.files] + [-1] * (len(old.files) - len(names)))
    fits = old.start + old.size <= rows[old.file]
    _refuse_changed(old.take(~fits & done), manifest)
    candidates = old.take(fits)
    cuts = _scan(manifest, candidates, shard_size, label_files=label_files, scratch=scratch)
    same = _same_digests(cuts, candidates)
    _refuse_changed(candidates.take(~same & done[fits]), manifest)
    if not same.all():  # rows changed under unfinished shards: plan those files anew
        files = set(candidates.file[~same].tolist())
        cuts.update(_scan(manifest, candidates, shard_size, same, only=files, validate=False))
    return _number(cuts, candidates, old, manifest)


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
            columns.get("tar_offset", none)[k],
        )
        for k in range(table.num_rows)
    )


@dataclass(frozen=True, slots=True)
class _Cuts:
    """One file's ranges in row order: ``R`` int64 starts and counts, ``R x 32`` digests, and
    per range the position of the kept candidate it is (``-1``: a new shard)."""

    start: np.ndarray
    count: np.ndarray
    digest_32: np.ndarray
    candidate: np.ndarray


class _Cutter:
    """Cuts one file's rows into ranges as they stream by, and digests each range.

    The candidates (the previous plan's shards on this file, sorted, not overlapping) are
    ranges as they were; the rows between them are cut into new ranges of ``shard_size``,
    each also ending where the rows' tar file changes.
    """

    def __init__(self, rows: int, kept: ShardTable, positions: np.ndarray, size: int) -> None:
        self.rows, self.size = rows, size
        self.kept = list(
            zip(kept.start.tolist(), kept.size.tolist(), positions.tolist(), strict=True)
        )
        self.next_kept = 0
        self.open: tuple[int, int, int] | None = None  # start, end, candidate (-1: new)
        self.builder = RangeDigest()
        self.last_key: Any = None  # the tar of the previous row (None: not a tar member)
        self.starts, self.counts, self.candidates = array("q"), array("q"), array("q")
        self.digests = bytearray()

    def feed(self, row: int, ids: pa.Array, keys: pa.Array | None) -> None:
        """Rows ``row .. row + len(ids)`` with their image ids and tar keys (``None``: no
        row of the batch is a tar member)."""
        hi = row + len(ids)
        changes = self._tar_changes(row, keys)
        batch = IdBatch(ids)
        pos = row
        while pos < hi:
            if self.open is None:
                self._open(pos)
            assert self.open is not None
            start, limit, candidate = self.open
            if candidate < 0:  # a new range ends at the next change of tar
                at = int(np.searchsorted(changes, start + 1))
                if at < len(changes) and changes[at] < limit:
                    limit = int(changes[at])
            stop = min(limit, hi)
            self.builder.update_slice(batch, pos - row, stop - row)
            pos = stop
            if stop == limit:
                self._close(start, limit, candidate)

    def finish(self) -> _Cuts:
        if self.open is not None:  # the file had fewer rows than its footer said
            raise ManifestError(f"a manifest file changed while it was read ({self.rows} rows)")
        return _Cuts(
            np.frombuffer(self.starts, np.int64).copy(),
            np.frombuffer(self.counts, np.int64).copy(),
            np.frombuffer(bytes(self.digests), np.uint8).reshape(-1, 32),
            np.frombuffer(self.candidates, np.int64).copy(),
        )

    def _open(self, pos: int) -> None:
        if self.next_kept < len(self.kept) and self.kept[self.next_kept][0] == pos:
            start, count, candidate = self.kept[self.next_kept]
            self.next_kept += 1
            self.open = (start, start + count, candidate)
            return
        stop = self.kept[self.next_kept][0] if self.next_kept < len(self.kept) else self.rows
        self.open = (pos, min(pos + self.size, stop), -1)

    def _close(self, start: int, end: int, candidate: int) -> None:
        self.starts.append(start)
        self.counts.append(end - start)
        self.candidates.append(candidate)
        self.digests += self.builder.digest()
        self.builder = RangeDigest()
        self.open = None

    def _tar_changes(self, row: int, keys: pa.Array | None) -> np.ndarray:
        """Sorted rows of this batch whose tar differs from the previous row's (a change
        between a tar's rows and other rows too); the file's first row is none."""
        first = row > 0
        if keys is None:
            changed = first and self.last_key is not None
            self.last_key = None
            return np.array([row] if changed else [], np.int64)
        before = pa.concat_arrays(
            [pa.array([self.last_key], keys.type), keys.slice(0, len(keys) - 1)]
        )
        equal = pc.fill_null(pc.equal(keys, before), False)
        both_none = pc.and_(pc.is_null(keys), pc.is_null(before))
        change = pc.invert(pc.or_(equal, both_none)).to_numpy(zero_copy_only=False)
        if not first:
            change[0] = False
        self.last_key = keys[len(keys) - 1].as_py()
        return row + np.flatnonzero(change).astype(np.int64)


def _scan(
    manifest: Manifest,
    candidates: ShardTable,
    shard_size: int,
    use: np.ndarray | None = None,
    only: set[int] | None = None,
    validate: bool = True,
    label_files: bool = False,
    scratch: Scratch | None = None,
) -> dict[int, _Cuts]:
    """One streaming pass: every file's ranges, cut and digested (of the files in ``only``,
    if given; around the candidates ``use`` marks, if given); nulls and empty strings refused; with ``validate``, repeated ids (and with
    ``label_files`` repeated label paths) too.

    Memory: one batch of rows, the ranges' columns, and DuckDB's limit (``scratch``).
    """
    order = np.lexsort((candidates.start, candidates.file))
    if use is not None:
        order = order[use[order]]
    by_file: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(0, np.int64))
    for k in np.unique(candidates.file).tolist():
        by_file[k] = order[candidates.file[order] == k]
    cuts: dict[int, _Cuts] = {}
    with HashStore(scratch) if validate else nullcontext() as store:
        checks = _Checks(manifest, store)
        base = 0
        for k, file in enumerate(manifest.files):
            if only is not None and k not in only:
                base += file.rows
                continue
            cutter = _Cutter(file.rows, candidates.take(by_file[k]), by_file[k], shard_size)
            for row, ids, uris in id_batches(file):
                checks.missing(base + row, ids, uris)
                if store is not None and not ids.null_count:
                    checks.add(base + row, ids, label_files)
                cutter.feed(row, ids, tar_keys(uris))
            cuts[k] = cutter.finish()
            base += file.rows
        checks.refuse_missing()
        if store is not None:
            checks.refuse_repeats()
    return cuts


def _same_digests(cuts: dict[int, _Cuts], candidates: ShardTable) -> np.ndarray:
    """Per candidate, whether its rows' digest is still the one it was planned with."""
    same = np.zeros(len(candidates), bool)
    for part in cuts.values():
        kept = part.candidate >= 0
        at = part.candidate[kept]
        same[at] = (part.digest_32[kept] == candidates.digest_32[at]).all(axis=1)
    return same


def _number(
    cuts: dict[int, _Cuts], kept: ShardTable, previous: ShardTable, manifest: Manifest
) -> Plan:
    """Kept shards keep their index and ids; new ones take the next free ones, in row order."""
    keys = sorted(cuts)
    parts = [cuts.pop(k) for k in keys]  # freed once joined: one copy of the columns at a time
    sizes = [len(p.start) for p in parts]
    file = np.repeat(np.array(keys, np.int32), sizes).astype(np.int32)
    start = np.concatenate([p.start for p in parts])
    count = np.concatenate([p.count for p in parts])
    digest_32 = np.concatenate([p.digest_32 for p in parts]).reshape(-1, 32)
    candidate = np.concatenate([p.candidate for p in parts])
    del parts
    new = candidate < 0
    index = np.empty(len(start), np.int64)
    first_id = np.empty(len(start), np.int64)
    index[~new] = kept.shard[candidate[~new]]
    first_id[~new] = kept.first_id[candidate[~new]]
    next_index = int(previous.shard.max()) + 1 if len(previous) else 0
    next_id = int((previous.first_id + previous.size).max()) if len(previous) else 0
    index[new] = next_index + np.arange(int(new.sum()), dtype=np.int64)
    first_id[new] = next_id + np.cumsum(count[new]) - count[new]
    files = [f.uri for f in manifest.files]
    table = ShardTable(files, index, file, start, count, first_id, digest_32)
    if len(index) > 1 and not (index[1:] > index[:-1]).all():  # a fresh plan is in order
        table = table.take(np.argsort(index, kind="stable"))
    return Plan(table, manifest.rows, kept=int((~new).sum()))


def _on_files(table: ShardTable, names: Sequence[str]) -> ShardTable:
    """``table`` with its ``file`` column pointing into ``names`` first (then any others)."""
    if tuple(table.files[: len(names)]) == tuple(names):
        return table
    where = {name: k for k, name in enumerate(names)}
    files = list(names)
    for name in table.files:
        if name not in where:
            where[name] = len(files)
            files.append(name)
    remap = np.array([where[name] for name in table.files], np.int32)
    return ShardTable(
        files,
        table.shard,
        remap[table.file] if len(table) else table.file,
        table.start,
        table.size,
        table.first_id,
        table.digest_32,
    )


class _Checks:
    """What one pass over the ids finds, then refused with the rows named."""

    def __init__(self, manifest: Manifest, store: HashStore | None) -> None:
        self.manifest = manifest
        self.store = store
        # (column, "null" or "empty") -> the first few rows, and how many rows in all
        self.rows: dict[tuple[str, str], list[int]] = defaultdict(list)
        self.counts: dict[tuple[str, str], int] = defaultdict(int)

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
        assert self.store is not None
        self.store.add_ids(ids, first)
        if label_files and is_string(ids):
            rows = first + np.arange(
                len(ids), dtype=np.int64
            )  # integer ids name distinct files, in no folder
            keys = label_name_keys(ids)
            self.store.add("labels", row_hashes(keys), rows)
            # labels/x.png is the file of key "x", and a folder of keys "x.png/...": such a
            # folder's key prefix is the file's key.
            at, lengths = prefixes_before(keys, b".png/")
            if len(at):  # rare: the running sums cost 8 bytes a byte of the batch's ids
                self.store.add("folders", prefix_hashes(keys, at, lengths), first + at)

    def refuse_missing(self) -> None:
        for (name, kind), rows in self.rows.items():
            if rows:
                shown = rows_text(rows, self.counts[(name, kind)])
                raise ManifestError(
                    f"{self.manifest.location}: {name} is {kind} in row(s) {shown}; every row "
                    f"needs a non-empty {name}."
                )

    def refuse_repeats(self) -> None:
        assert self.store is not None
        where = self.manifest.location
        repeated, rows = _repeats(self.manifest, self.store, "ids", lambda i: i)
        if repeated:
            raise ManifestError(
                f"{where}: {len(repeated)} image_id value(s) repeat, e.g. {repeated} "
                f"in rows {rows_text(rows)}; image ids must be unique."
            )
        if not self.store.added["labels"]:
            return
        repeated, rows = _repeats(self.manifest, self.store, "labels", label_file_name)
        if repeated:
            raise ManifestError(
                f"{where}: {len(repeated)} label file name(s) would hold several "
                f"images, e.g. labels/{repeated[0]} for rows {rows_text(rows)} (label maps keep "
                "the id's path with its image suffix swapped for .png, and characters such as "
                "':' made '_'). Rename those ids, or label without --png-labels."
            )
        if not self.store.added["folders"]:
            return
        clashes = _file_folder_clashes(self.manifest, self.store)
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
    manifest: Manifest, store: HashStore, table: str, key_of: Callable[[Any], Any]
) -> tuple[list[Any], list[int]]:
    """Keys shared by several rows, found from their hashes and confirmed on the keys.

    Args:
        table: the store's table of the keys' hashes (``ids`` or ``labels``).
        key_of: an id -> its exact key (two rows collide when their keys are equal).

    Returns:
        Up to ``MAX_LISTED`` repeated keys (those whose first row comes first), and the
        manifest rows that hold them, sorted.
    """
    repeated: list[Any] = []
    rows_of: dict[Any, list[int]] = {}
    skip = 0
    while (skip or store.any_repeated(table)) and len(
        repeated
    ) < MAX_LISTED:  # suspects, page by page, until enough are confirmed
        suspects = store.repeated(table, skip)
        if not len(suspects):
            break
        skip += len(suspects)
        found: dict[Any, list[int]] = defaultdict(list)
        for row, image_id in ids_at(manifest, store.rows_of(table, suspects)):
            found[key_of(image_id)].append(row)
        confirmed = [key for key, rows in found.items() if len(rows) > 1]
        firsts = sorted(confirmed, key=lambda key: found[key][0])
        for key in firsts[: MAX_LISTED - len(repeated)]:
            repeated.append(key)
            rows_of[key] = found[key]
    return repeated, sorted(r for key in repeated for r in rows_of[key])


Clash = tuple[str, tuple[int, str], tuple[int, str]]  # label path, (row, id) of file, of folder


def _file_folder_clashes(manifest: Manifest, store: HashStore) -> list[Clash]:
    """Label files that are also another id's folder, from hashes, confirmed on the names.

    Returns:
        Up to ``MAX_LISTED`` clashes, each: the label path, and ``(row, image_id)`` of the
        file's id and of one id with a folder of that name.
    """
    folder_hashes, folder_rows = store.folder_suspects()
    if not len(folder_hashes):
        return []
    files = {
        label_file_name(image_id): (row, image_id)
        for row, image_id in ids_at(manifest, store.rows_of("labels", np.unique(folder_hashes)))
    }
    clashes: list[Clash] = []
    for row, image_id in ids_at(manifest, np.unique(folder_rows)):
        parts = label_file_name(image_id).split("/")[:-1]  # a hashed name has no folder
        for name in ("/".join(parts[: k + 1]) for k in range(len(parts))):
            if name in files and len(clashes) < MAX_LISTED:
                clashes.append((name, files[name], (row, image_id)))
        if len(clashes) == MAX_LISTED:
            break
    return clashes


def _refuse_changed(shards: Sequence[Shard], manifest: Manifest) -> None:
    if len(shards):
        first = shards[0]
        raise ManifestError(
            f"{manifest.location}: the rows of {len(shards)} finished shard(s) changed since they "
            f"were labelled, e.g. {first.name} ({first.file} rows {first.start}.."
            f"{first.start + first.count}). Appending rows or files is fine; changing or removing "
            "labelled ones is not: label into a new --output."
        )
