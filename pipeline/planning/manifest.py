"""Parquet manifests: their files, footers and columns, read without a Python object per row.

A manifest is one Parquet file, a folder of them, or a glob, on a local disk, ``file://`` or
``s3://`` (through ``pyarrow.fs``). Required columns: ``image_id`` (unique, non-null string or
integer) and ``uri``; optional ``width``, ``height``, ``sha256``, ``tar_offset``; other columns
pass through.
Files are taken in sorted order and rows in file order: that order is the plan's.

A relative ``uri`` is taken from the folder of the Parquet file that holds its row (for an
``s3://`` manifest, that file's prefix), never from the working directory: a manifest and its
images can move together, and every worker reads the same files wherever it runs. Plans cover
the ids, not the uris, so resolving them changes no plan.

A ``uri`` that holds ``.tar#`` names a member of a tar file: ``<tar uri>#<member name>``, the
tar being the text up to the first ``.tar#`` (with ``.tar``), the member the rest
(``s3://b/data/00001.tar#000123.jpg``, ``00001.tar#a/b.jpg``). Only that spelling counts: a
plain file may have ``#`` in its name (``a#b.jpg``), but not ``.tar#``. A tar's rows are
contiguous in a manifest, and the planner never lets a shard cross from one tar to another
(:func:`tar_keys`).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
import shlex
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.formats.layout import IMAGE_SUFFIXES
from pipeline.formats.storage import resolve, retrying
from pipeline.formats.tars import TAR_MEMBER, member_uri, split_member

REQUIRED = ("image_id", "uri")
OPTIONAL_TYPES = {
    "width": pa.types.is_integer,
    "height": pa.types.is_integer,
    "sha256": pa.types.is_string,
    "tar_offset": pa.types.is_integer,  # a tar member's header offset (pipeline.formats.tars)
}
BATCH_ROWS = 1 << 16  # rows per streamed batch: bounds memory whatever the manifest's size
MAX_LISTED = 5
# A scheme followed by "://" (file, s3, gs, http...), or a Windows drive: not relative.
_NOT_RELATIVE = re.compile(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|[A-Za-z]:[\\/])")


class ManifestError(InputError):
    """The manifest cannot be used; the message names the rows or columns and the fix."""


@dataclass(frozen=True, slots=True)
class ManifestFile:
    """One Parquet file of a manifest: a location :func:`resolve` reads, and its row count."""

    uri: str
    rows: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest's files in plan order, from their footers alone."""

    location: str
    files: tuple[ManifestFile, ...]
    columns: tuple[str, ...]
    id_kind: str  # "string" or "integer": the image_id column's type

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)


def open_manifest(location: str) -> Manifest:
    """List the manifest's files and check their schemas from the footers (no rows read).

    Raises:
        ManifestError: no file, an unreadable file, missing columns or wrong types.
    """
    fs, path = resolve(location)
    paths = _parquet_files(fs, path, location)
    with ThreadPoolExecutor(max_workers=16) as pool:  # footers of many S3 objects at once
        schemas = list(pool.map(lambda p: _footer(fs, p, location), paths))
    id_kind = None
    for p, (schema, _) in zip(paths, schemas, strict=True):
        validate_schema(schema, p)
        kind = "integer" if pa.types.is_integer(schema.field("image_id").type) else "string"
        if id_kind not in (None, kind):
            raise ManifestError(
                f"{p}: image_id is {kind} here but not in the files before it; every file of a "
                "manifest needs the same image_id type."
            )
        id_kind = kind
    files = tuple(
        ManifestFile(_uri(location, p), rows) for p, (_, rows) in zip(paths, schemas, strict=True)
    )
    manifest = Manifest(location, files, tuple(schemas[0][0].names), id_kind or "string")
    if not manifest.rows:
        raise ManifestError(
            f"Manifest {location} holds no rows: nothing to label. Point --manifest at a "
            "manifest with images in it (python -m jobs.manifest FOLDER --output M.parquet "
            "makes one from a folder of images)."
        )
    return manifest


def validate_schema(schema: pa.Schema, where: str = "manifest") -> None:
    """Raise :class:`ManifestError` for missing columns or wrong column types."""
    missing = [c for c in REQUIRED if c not in schema.names]
    if missing:
        raise ManifestError(
            f"{where} lacks column(s) {', '.join(missing)}; it has {', '.join(schema.names)}. "
            "A manifest needs 'image_id' (unique) and 'uri' (path, file:// or s3:// URI)."
        )
    id_type = schema.field("image_id").type
    if not (_is_string(id_type) or pa.types.is_integer(id_type)):
        raise ManifestError(f"{where}: image_id must be string or integer, not {id_type}.")
    if not _is_string(schema.field("uri").type):
        raise ManifestError(
            f"{where}: uri must be a string column, not {schema.field('uri').type}."
        )
    for name, check in OPTIONAL_TYPES.items():
        if name in schema.names and not check(schema.field(name).type):
            raise ManifestError(
                f"{where}: optional column {name} has type {schema.field(name).type}."
            )


def id_batches(file: ManifestFile) -> Iterator[tuple[int, pa.Array, pa.Array]]:
    """``(first row, image_id, uri)`` of each batch of ``file``, in row order."""
    fs, path = resolve(file.uri)
    with fs.open_input_file(path) as handle:
        row = 0
        for batch in pq.ParquetFile(handle).iter_batches(
            batch_size=BATCH_ROWS, columns=["image_id", "uri"]
        ):
            yield row, batch.column(0), batch.column(1)
            row += batch.num_rows


def ids_at(manifest: Manifest, rows: np.ndarray) -> Iterator[tuple[int, Any]]:
    """``(row, image_id)`` of the given rows (sorted manifest row numbers), in row order: one
    more pass over the files that hold them, with a Python object per given row only."""
    base = 0
    for file in manifest.files:
        lo, hi = np.searchsorted(rows, [base, base + file.rows])
        if lo < hi:
            for row, ids, _ in id_batches(file):
                a, b = np.searchsorted(rows, [base + row, base + row + len(ids)])
                if a < b:
                    local = pa.array(rows[a:b] - base - row)
                    yield from zip(rows[a:b].tolist(), ids.take(local).to_pylist(), strict=True)
        base += file.rows


def tar_keys(uris: pa.Array) -> pa.Array | None:
    """Per row, the tar its ``uri`` is a member of (null for other uris), as
    :func:`pipeline.formats.tars.split_member` has it, vectorised; ``None`` when no row of
    ``uris`` is a tar member (the common case, found with one substring search)."""
    members = pc.match_substring(uris, TAR_MEMBER)
    if not pc.any(members).as_py():
        return None
    tars = pc.replace_substring_regex(uris, r"^(.*?\.tar)#.*$", r"\1", max_replacements=1)
    return pc.if_else(members, tars, pa.nulls(len(uris), tars.type))


def read_range(file: str, start: int, count: int) -> pa.Table:
    """Rows ``start .. start + count`` of one manifest file (the columns a worker needs),
    reading only the row groups that hold them."""

    def read() -> pa.Table:
        fs, path = resolve(file)
        with fs.open_input_file(path) as handle:
            parquet = pq.ParquetFile(handle)
            groups: list[int] = []
            first = offset = 0
            for group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(group).num_rows
                if offset + rows > start and offset < start + count:
                    first = offset if not groups else first
                    groups.append(group)
                offset += rows
            names = parquet.schema_arrow.names
            columns = [c for c in (*REQUIRED, *OPTIONAL_TYPES) if c in names]
            table = parquet.read_row_groups(groups, columns=columns)
        return table.slice(start - first, count)

    return retrying(read, f"{file} rows {start}..{start + count}")


def first_uris(manifest: Manifest, count: int) -> list[str]:
    """The ``uri`` of the manifest's first ``count`` rows, in plan order, resolved as
    :func:`row_uri` does."""
    uris: list[str] = []
    for file in manifest.files:
        if len(uris) >= count:
            break
        take = min(count - len(uris), file.rows)
        uris += [row_uri(u, file.uri) for u in read_range(file.uri, 0, take)["uri"].to_pylist()]
    return uris


def row_uri(uri: str, file: str) -> str:
    """Where a row's ``uri`` points: a relative one taken from the folder of ``file``.

    Args:
        uri: the row's ``uri`` value as written in the manifest.
        file: the manifest file that holds the row (a :class:`ManifestFile` ``uri``: an
            absolute local path or an ``s3://`` URI).

    Returns:
        ``uri`` itself when it is an absolute path or has a scheme (``file://``, ``s3://``,
        ``http(s)://``...); else ``uri`` joined to ``file``'s folder and normalised
        (``../x.png`` is the folder's sibling). A tar member's uri (``x.tar#member``) has
        its tar's path resolved so, and its member name kept as written.
    """
    if os.path.isabs(uri) or _NOT_RELATIVE.match(uri):
        return uri
    member = split_member(uri)
    if member is not None:
        return member_uri(row_uri(member[0], file), member[1])
    if "://" in file:  # an object store: keys are "/"-separated whatever the OS
        scheme, path = file.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(posixpath.dirname(path), uri))}"
    return os.path.normpath(os.path.join(os.path.dirname(file), uri))


def rows_text(rows: list[int], total: int | None = None) -> str:
    """``"0, 1, 2, 3, 4 and 7 more"``: a few row numbers of ``total`` for a message."""
    total = len(rows) if total is None else total
    shown = ", ".join(str(r) for r in rows[:MAX_LISTED])
    return shown + (f" and {total - MAX_LISTED} more" if total > MAX_LISTED else "")


def _footer(fs: pafs.FileSystem, path: str, location: str) -> tuple[pa.Schema, int]:
    try:
        with fs.open_input_file(path) as handle:
            metadata = pq.read_metadata(handle)
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"Cannot read manifest {location} ({path}) as Parquet: {err}") from err
    return metadata.schema.to_arrow_schema(), metadata.num_rows


def _parquet_files(fs: pafs.FileSystem, path: str, location: str) -> list[str]:
    """The manifest's files in sorted order (a sorted order makes the plan deterministic)."""
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        listed = [i.path for i in fs.get_file_info(selector) if fnmatch.fnmatch(i.path, path)]
        files = sorted(listed)
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ManifestError(f"Manifest {location} does not exist.")
        if info.type == pafs.FileType.Directory:
            listed = [i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))]
            files = sorted(p for p in listed if p.endswith(".parquet"))
        else:
            listed = files = [path]
    images = sum(p.lower().endswith(IMAGE_SUFFIXES) for p in listed)
    if images and not any(p.endswith(".parquet") for p in files):
        what = (
            "is an image"
            if listed == [path]
            else f"holds {images} image file(s) and no .parquet file"
        )
        raise ManifestError(
            f"Manifest {location} {what}: it is not a manifest.{_make_one(location)}"
        )
    if not files:
        raise ManifestError(f"Manifest {location} matches no .parquet file.")
    return files


def _make_one(location: str) -> str:
    """The fix for images given where a manifest was expected."""
    return (
        " --manifest takes a Parquet manifest that lists the images: make one with "
        f"`python -m jobs.manifest {shlex.quote(location)} --output M.parquet`, then pass "
        "--manifest M.parquet."
    )


def _uri(location: str, path: str) -> str:
    """A file system path back to a location :func:`resolve` reads (``s3://`` kept)."""
    scheme = urlparse(location).scheme
    return f"{scheme}://{path}" if len(scheme) > 1 and scheme != "file" else path


def _is_string(type_: pa.DataType) -> bool:
    return bool(pa.types.is_string(type_) or pa.types.is_large_string(type_))
