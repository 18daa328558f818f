"""The sample a comparison labels: ``N`` rows of a manifest drawn by a seeded hash of their ids.

Each row's key is ``sha256("<seed>:<image_id>")``; the sample is the ``N`` rows with the
smallest keys, kept in the manifest's order (so a tar's members stay together, as the planner
needs them). So the same manifest and seed give the same images whatever the order of its
files and rows, a larger ``N`` holds a smaller one's images, and adding rows to a manifest
changes a sample only where a new row's key is among the ``N`` smallest. One streaming pass over the
``image_id`` column finds them (memory holds ``N`` keys); a second reads only their rows, every
column kept. Relative ``uri`` values are rewritten as :func:`pipeline.planning.manifest.row_uri`
resolves them (against their manifest file's folder), so the sample reads the same images from
wherever it is written.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import itertools
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import InputError
from pipeline.formats.storage import Storage, resolve
from pipeline.planning.manifest import id_batches, open_manifest, row_uri

SAMPLE = "sample.parquet"


def sample_key(image_id: Any, seed: int) -> int:
    """The draw's order of one row: ``sha256("<seed>:<image_id>")`` (the id as text), as a
    256-bit integer (ties between ids are then out of reach)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest(), "big")


def draw_sample(manifest: str, size: int, seed: int = 0) -> pa.Table:
    """The ``size`` rows of ``manifest`` with the smallest :func:`sample_key`, in its order.

    Args:
        manifest: a manifest location as ``jobs.label --manifest`` takes it.
        size: rows wanted; a manifest with fewer rows is taken whole.
        seed: which sample.

    Returns:
        The rows with every column of the manifest, ``uri`` resolved (see the module).

    Raises:
        InputError: ``size`` is below 1, or the manifest cannot be read.
    """
    if size < 1:
        raise InputError(f"--sample {size}: give at least 1 image to label.")
    files = open_manifest(manifest).files
    # 1. One pass over the ids, a batch at a time: the `size` smallest keys seen so far.
    chosen: list[tuple[int, int, int]] = []  # (key, file index, row)
    for index, file in enumerate(files):
        for first, ids, _ in id_batches(file):
            keys = [sample_key(image_id, seed) for image_id in ids.to_pylist()]
            batch = heapq.nsmallest(
                size, zip(keys, itertools.repeat(index), itertools.count(first))
            )
            chosen = heapq.nsmallest(size, chosen + batch)
    # 2. Their rows, a file at a time, every column, uris resolved against their file.
    parts = []
    for index, file in enumerate(files):
        rows = sorted(row for _, i, row in chosen if i == index)
        if rows:
            table = _rows(file.uri, rows)
            uris = [row_uri(u, file.uri) for u in table["uri"].to_pylist()]
            parts.append(table.set_column(table.schema.get_field_index("uri"), "uri", [uris]))
    return pa.concat_tables(parts, promote_options="default")


def _rows(file: str, rows: list[int]) -> pa.Table:
    """The given rows (sorted) of one Parquet file, every column, reading only the row groups
    that hold them."""
    fs, path = resolve(file)
    wanted = np.asarray(rows, np.int64)
    with fs.open_input_file(path) as handle:
        parquet = pq.ParquetFile(handle)
        sizes = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
        starts = np.cumsum([0, *sizes])  # each group's first row, then the file's end
        group_of = np.searchsorted(starts, wanted, side="right") - 1
        groups = np.unique(group_of)
        table = parquet.read_row_groups(groups.tolist())
    # The groups read lie end to end in the table: each wanted row's position there.
    read_starts = np.cumsum([0, *(sizes[g] for g in groups)])[:-1]
    position = read_starts[np.searchsorted(groups, group_of)] + wanted - starts[group_of]
    return table.take(pa.array(position))


def write_sample(storage: Storage, table: pa.Table) -> None:
    """Write ``SAMPLE`` (atomically), or check that the one there holds the same rows.

    Raises:
        InputError: the folder holds another sample (another manifest, size or seed): its
            variants were labelled on other images.
    """
    if storage.exists(SAMPLE):
        there = pq.read_table(io.BytesIO(storage.read(SAMPLE)))
        if there["image_id"].to_pylist() != table["image_id"].to_pylist():
            raise InputError(
                f"{storage.uri(SAMPLE)} holds another sample (other manifest, --sample or "
                "--seed) than this command draws: its variants were labelled on other images. "
                "Give a new --output, or the command that made it."
            )
        return
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_atomic(SAMPLE, buffer.getvalue())
