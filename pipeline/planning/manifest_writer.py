"""Manifests written: listed rows to one Parquet file, and the rows left out to a sidecar.

The Parquet file has ``image_id`` and ``uri`` (strings), and ``width`` / ``height`` (int32),
``sha256`` (hex string), ``key`` (string) and ``tar_offset`` (int64) when any row has them
(null for a row that has not), then the img2dataset columns joined onto tar members' rows,
as their Parquets type them (null for the rows of other tars and files). The sidecar
``<output>.unreadable.jsonl`` holds one ``schemas/failure.schema.json`` object a line for each
row that probing could not read; it exists only when some row was left out. Both are written
atomically (local or ``s3://``), so the same rows give the same bytes at the same path.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.formats.images import ImageFailure
from pipeline.formats.storage import Storage
from pipeline.planning.rows import ManifestRow

# Workers read a shard's rows by row group: small groups keep each read small.
ROW_GROUP_ROWS = 1 << 14
UNREADABLE_SUFFIX = ".unreadable.jsonl"


OWN_COLUMNS = (
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("sha256", pa.string()),
    ("key", pa.string()),
    ("tar_offset", pa.int64()),
)


def manifest_table(rows: Sequence[ManifestRow], extra: pa.Schema | None = None) -> pa.Table:
    """The rows as the Parquet table :mod:`pipeline.planning.manifest` reads, in row order.

    Args:
        rows: the rows.
        extra: the columns of the rows' ``extra`` pairs, written after ours with these types.
    """
    columns: dict[str, pa.Array] = {
        "image_id": pa.array([r.image_id for r in rows], pa.string()),
        "uri": pa.array([r.uri for r in rows], pa.string()),
    }
    for name, type_ in OWN_COLUMNS:
        values = [getattr(r, name) for r in rows]
        if any(v is not None for v in values):
            columns[name] = pa.array(values, type_)
    if extra is not None and len(extra):
        pairs = [dict(r.extra) for r in rows]
        for column in extra:
            values = [p.get(column.name) for p in pairs]
            columns[column.name] = pa.array(values, column.type)
    return pa.table(columns)


def write_manifest(
    rows: Sequence[ManifestRow],
    output: str,
    unreadable: Sequence[ImageFailure] = (),
    extra: pa.Schema | None = None,
) -> str | None:
    """Write ``rows`` to ``output`` and ``unreadable`` to its sidecar, each atomically.

    Args:
        rows: the manifest's rows, in the order to write.
        output: a ``.parquet`` path or URI (local, ``file://`` or ``s3://``).
        unreadable: rows left out; a stale sidecar is removed when there is none.
        extra: the types of the rows' ``extra`` columns (:attr:`Listing.columns`).

    Returns:
        The sidecar's location, or None when no row was left out.

    Raises:
        InputError: ``output`` does not end in ``.parquet``.
    """
    if not output.endswith(".parquet"):
        raise InputError(
            f"--output {output} must name a .parquet file (a folder would be read as every "
            "Parquet file in it)."
        )
    folder, name = _split(output)
    storage = Storage(folder)
    sidecar = name + UNREADABLE_SUFFIX
    if unreadable:
        lines = [json.dumps(f.to_json(), ensure_ascii=False) + "\n" for f in unreadable]
        storage.write_atomic(sidecar, "".join(lines).encode("utf-8"))
    else:
        storage.delete(sidecar)  # it described an earlier listing
    buffer = io.BytesIO()
    pq.write_table(manifest_table(rows, extra), buffer, row_group_size=ROW_GROUP_ROWS)
    storage.write_atomic(name, buffer.getvalue())
    return output + UNREADABLE_SUFFIX if unreadable else None


def _split(output: str) -> tuple[str, str]:
    """``(folder, file name)`` of a path or URI."""
    if "://" in output and not output.startswith("file://"):
        folder, name = output.rsplit("/", 1)
        return folder, name
    return os.path.split(os.path.abspath(output.removeprefix("file://")))
