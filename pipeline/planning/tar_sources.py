"""Tar shards listed into manifest rows: WebDataset's layout, and img2dataset's Parquet beside.

A tar ``T.tar`` that a SOURCE finds gives one row per image member: a regular file whose name
ends in one of :data:`~pipeline.formats.layout.IMAGE_SUFFIXES` (any case) and has no hidden
part. Its ``image_id`` is ``<T's path relative to the SOURCE, without .tar>/<key>``, ``key``
its WebDataset key (:func:`pipeline.formats.tars.webdataset_key`), ``uri``
``<tar uri>#<member name>`` and ``tar_offset`` its header's byte offset, where the labelling
job starts reading. A key of several image members (``k.jpg`` and ``k.seg.png``) gives each
the id ``<T>/<member name>`` instead, so that ids stay unique. Other members are counted.

Where ``T.parquet`` lies beside ``T.tar`` with a ``key`` column (img2dataset writes one), its
columns join onto the rows by ``key``: integer ``width`` and ``height`` fill the row's own;
columns named as ours (``image_id``, ``uri``, ``sha256``, ``tar_offset``) are kept as
``img2dataset_<name>`` (img2dataset's ``sha256`` is of the file it downloaded, before any
resizing, not of the member); the rest pass through. Parquet rows whose ``status`` is not
``success`` are left out and counted, even where the tar holds an image for them.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.formats.layout import IMAGE_SUFFIXES
from pipeline.formats.storage import resolve, retrying
from pipeline.formats.tars import TarEntry, index_tar, member_uri, webdataset_key
from pipeline.planning.rows import ManifestRow, SourceError

TAR_SUFFIX = ".tar"
SIDECAR_SUFFIX = ".parquet"
OURS = ("image_id", "uri", "sha256", "tar_offset")  # img2dataset columns renamed
SIZES = ("width", "height")
DEFAULT_THREADS = 8  # tars listed at once: each is one forward read
NO_COLUMNS = pa.schema([])


@dataclass(frozen=True, slots=True)
class TarSource:
    """A tar a SOURCE found: its location, the ids' prefix, its img2dataset Parquet if any."""

    uri: str
    id_prefix: str
    parquet: str | None
    origin: str


@dataclass(slots=True)
class TarListing:
    """The rows of some tars and what was left out of them.

    Attributes:
        rows: one per image member kept, tar by tar in the order given, archive order within.
        skipped: reason -> count of members (or tars) left out.
        not_success: img2dataset rows whose ``status`` is not ``success``.
        not_success_in_tar: of which the tar holds an image (left out all the same).
        schema: the joined img2dataset columns, their types unified across the Parquets.
    """

    rows: list[ManifestRow] = field(default_factory=list)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    not_success: int = 0
    not_success_in_tar: int = 0
    schema: pa.Schema = NO_COLUMNS


def list_tars(
    tars: Sequence[TarSource], threads: int = DEFAULT_THREADS, progress: bool = True
) -> TarListing:
    """Index every tar (``threads`` at once) and make its rows.

    Raises:
        SourceError: an img2dataset Parquet that cannot be read.
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:
        bar = tqdm(
            pool.map(_one, tars),
            total=len(tars),
            desc="listing tars",
            unit="tar",
            disable=None if progress else True,  # None: only on a terminal
        )
        parts = list(bar)
    listing = TarListing()
    schemas = []
    for part in parts:
        listing.rows += part.rows
        listing.skipped += part.skipped
        listing.not_success += part.not_success
        listing.not_success_in_tar += part.not_success_in_tar
        schemas.append(part.schema)
    if schemas:
        listing.schema = pa.unify_schemas(schemas, promote_options="permissive")
    return listing


def _one(tar: TarSource) -> TarListing:
    """The rows of one tar, joined with its Parquet."""
    part = TarListing()
    try:
        index = index_tar(tar.uri)
    except OSError:  # per-tar boundary: one unreadable tar never stops the listing
        part.skipped["unreadable .tar"] += 1
        return part
    part.skipped["cut off by the end of a truncated .tar"] += index.cut
    part.skipped["damaged .tar (unreadable headers skipped)"] += index.damaged
    part.skipped["link or special member in a .tar"] += index.not_files
    images = _image_members(index.entries, part.skipped)
    join, bad, part.schema = _sidecar(tar) if tar.parquet else ({}, set(), NO_COLUMNS)
    part.not_success = len(bad)
    by_key = collections.Counter(key for key, _ in images)
    for key, entry in images:
        if key in bad:
            part.not_success_in_tar += 1
            continue
        columns = join.get(key, {})
        width, height = (_size(columns.get(s)) for s in SIZES)
        name = entry.name.removeprefix("./") if by_key[key] > 1 else key
        part.rows.append(
            ManifestRow(
                f"{tar.id_prefix}/{name}",
                member_uri(tar.uri, entry.name),
                f"{tar.origin} ({tar.uri})",
                width=width,
                height=height,
                key=key,
                tar_offset=entry.offset,
                extra=tuple((k, v) for k, v in columns.items() if k not in SIZES),
            )
        )
    part.skipped = +part.skipped  # zero counts dropped
    return part


def _size(value: Any) -> int | None:
    """An img2dataset width or height as the manifest's (a positive integer), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _image_members(
    entries: Sequence[TarEntry], skipped: collections.Counter[str]
) -> list[tuple[str, TarEntry]]:
    """``(key, entry)`` of the image members; the others counted by reason."""
    images = []
    for entry in entries:
        key, _ = webdataset_key(entry.name)
        suffix = PurePosixPath(entry.name).suffix.lower()
        if not key or any(part.startswith(".") for part in key.split("/")):
            skipped["hidden (in a .tar)"] += 1
        elif suffix not in IMAGE_SUFFIXES:
            skipped[f"{suffix or 'no extension'} (in a .tar)"] += 1
        else:
            images.append((key, entry))
    return images


def _sidecar(tar: TarSource) -> tuple[dict[str, dict[str, Any]], set[str], pa.Schema]:
    """An img2dataset Parquet: ``key -> columns`` of its rows of status ``success``, the keys
    of the others, and the joined columns' schema (renamed as the module says)."""
    assert tar.parquet is not None
    table = _read_table(tar.parquet)
    if "key" not in table.column_names:
        raise SourceError(
            f"{tar.parquet} lies beside {tar.uri} but has no 'key' column, so it cannot be "
            "joined onto the tar's members. Move it away, or give it img2dataset's 'key'."
        )
    keys = pc.cast(table["key"], pa.string()).to_pylist()
    table = table.drop_columns(["key"])
    names = [
        f"img2dataset_{n}"
        if n in OURS or (n in SIZES and not pa.types.is_integer(table.schema.field(n).type))
        else n
        for n in table.column_names
    ]
    table = table.rename_columns(names)
    status = table["status"].to_pylist() if "status" in names else [None] * len(keys)
    rows = table.to_pylist()
    join: dict[str, dict[str, Any]] = {}
    bad: set[str] = set()
    for key, state, row in zip(keys, status, rows, strict=True):
        if key is None:
            continue
        if state is not None and state != "success":
            bad.add(key)
        else:
            join.setdefault(key, row)
    schema = pa.schema([f for f in table.schema if f.name not in SIZES])
    return join, bad - join.keys(), schema


def _read_table(location: str) -> pa.Table:
    def read() -> pa.Table:
        fs, path = resolve(location)
        with fs.open_input_file(path) as handle:
            return pq.read_table(handle)

    try:
        return retrying(read, location)
    except (OSError, pa.ArrowInvalid) as err:
        raise SourceError(f"{location} (an img2dataset Parquet) cannot be read: {err}") from err
