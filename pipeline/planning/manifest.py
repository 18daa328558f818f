"""Parquet manifests: validation before any work, and deterministic shard plans.

A manifest is one Parquet file, a folder of them, or a glob, on a local disk, ``file://`` or
``s3://`` (through ``pyarrow.fs``). Required columns: ``image_id`` (unique, non-null string or
integer) and ``uri``; optional ``width``, ``height``, ``sha256``; other columns pass through.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from pipeline.errors import InputError
from pipeline.formats.layout import shard_name
from pipeline.formats.storage import resolve

REQUIRED = ("image_id", "uri")
OPTIONAL_TYPES = {
    "width": pa.types.is_integer,
    "height": pa.types.is_integer,
    "sha256": pa.types.is_string,
}
_MAX_LISTED = 5


class ManifestError(InputError):
    """The manifest cannot be used; the message names the rows or columns and the fix."""


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One manifest row that a worker needs: ``index`` is its position in the plan."""

    index: int
    image_id: str | int
    uri: str
    width: int | None = None
    height: int | None = None
    sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of work: consecutive manifest rows, named by position."""

    index: int
    records: tuple[ImageRecord, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)


def read_manifest(location: str) -> pa.Table:
    """Read and validate a manifest (all columns), in a deterministic row order."""
    fs, path = resolve(location)
    files = _parquet_files(fs, path, location)
    try:
        table = ds.dataset(files, filesystem=fs, format="parquet").to_table()
    except (pa.ArrowInvalid, OSError) as err:
        raise ManifestError(f"Cannot read manifest {location} as Parquet: {err}") from err
    validate(table, location)
    return table


def first_uris(location: str, count: int) -> list[str]:
    """The ``uri`` of the manifest's first ``count`` rows (in plan order), reading only those."""
    fs, path = resolve(location)
    dataset = ds.dataset(_parquet_files(fs, path, location), filesystem=fs, format="parquet")
    uris: list[str] = dataset.head(count, columns=["uri"])["uri"].to_pylist()
    return uris


def validate(table: pa.Table, location: str = "manifest") -> None:
    """Raise :class:`ManifestError` for missing columns, wrong types, null or duplicate ids."""
    missing = [c for c in REQUIRED if c not in table.column_names]
    if missing:
        raise ManifestError(
            f"{location} lacks column(s) {', '.join(missing)}; it has {', '.join(table.column_names)}. "
            "A manifest needs 'image_id' (unique) and 'uri' (path, file:// or s3:// URI)."
        )
    id_type = table.schema.field("image_id").type
    if not (
        pa.types.is_string(id_type)
        or pa.types.is_large_string(id_type)
        or pa.types.is_integer(id_type)
    ):
        raise ManifestError(f"{location}: image_id must be string or integer, not {id_type}.")
    uri_type = table.schema.field("uri").type
    if not (pa.types.is_string(uri_type) or pa.types.is_large_string(uri_type)):
        raise ManifestError(f"{location}: uri must be a string column, not {uri_type}.")
    for name, check in OPTIONAL_TYPES.items():
        if name in table.column_names and not check(table.schema.field(name).type):
            raise ManifestError(
                f"{location}: optional column {name} has type {table.schema.field(name).type}."
            )
    for column in REQUIRED:
        nulls = pc.indices_nonzero(pc.is_null(table[column])).to_pylist()
        if nulls:
            raise ManifestError(
                f"{location}: {column} is null in row(s) {_rows(nulls)}; every row needs one."
            )
    counts = pc.value_counts(table["image_id"])
    duplicated = pc.filter(
        counts.field("values"), pc.greater(counts.field("counts"), 1)
    ).to_pylist()
    if duplicated:
        mask = pc.is_in(table["image_id"], value_set=pa.array(duplicated[:_MAX_LISTED]))
        rows = pc.indices_nonzero(mask).to_pylist()
        raise ManifestError(
            f"{location}: {len(duplicated)} image_id value(s) repeat, e.g. {duplicated[:_MAX_LISTED]} "
            f"in rows {_rows(rows)}; image ids must be unique."
        )


def plan_shards(table: pa.Table, shard_size: int) -> list[Shard]:
    """Split rows into shards of ``shard_size`` consecutive rows (the last may be shorter)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}.")
    ids = table["image_id"].to_pylist()
    uris = table["uri"].to_pylist()
    widths = table["width"].to_pylist() if "width" in table.column_names else [None] * len(ids)
    heights = table["height"].to_pylist() if "height" in table.column_names else [None] * len(ids)
    digests = table["sha256"].to_pylist() if "sha256" in table.column_names else [None] * len(ids)
    records = [
        ImageRecord(i, image_id, uri, w, h, d)
        for i, (image_id, uri, w, h, d) in enumerate(
            zip(ids, uris, widths, heights, digests, strict=True)
        )
    ]
    return [
        Shard(index=n, records=tuple(records[start : start + shard_size]))
        for n, start in enumerate(range(0, len(records), shard_size))
    ]


def _parquet_files(fs: pafs.FileSystem, path: str, location: str) -> list[str]:
    """The manifest's files in sorted order (a sorted order makes the plan deterministic)."""
    if any(ch in path for ch in "*?["):
        base = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0] or "/"
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        files = sorted(i.path for i in fs.get_file_info(selector) if fnmatch.fnmatch(i.path, path))
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ManifestError(f"Manifest {location} does not exist.")
        if info.type == pafs.FileType.Directory:
            selector = pafs.FileSelector(path, recursive=True)
            files = sorted(
                i.path for i in fs.get_file_info(selector) if i.path.endswith(".parquet")
            )
        else:
            files = [path]
    if not files:
        raise ManifestError(f"Manifest {location} matches no .parquet file.")
    return files


def _rows(rows: list[int]) -> str:
    shown = ", ".join(str(r) for r in rows[:_MAX_LISTED])
    return shown + (f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else "")
