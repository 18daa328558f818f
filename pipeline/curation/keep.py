"""A keep-one manifest: the run's manifest less every near-duplicate but each group's first.

The rows are the run's own manifest rows (``run.json``'s ``config.manifest``), every column
kept, in the manifest's order, streamed a batch at a time; only the ids to drop are held in
memory. Relative ``uri`` values are resolved against their manifest file's folder as the
planner resolves them (:func:`pipeline.planning.manifest.row_uri`), so the new manifest works
from wherever it is written. Images the run did not embed (failed, or in unfinished shards)
are in no group and are kept: ``jobs.label`` on the new manifest labels them again.
"""

from __future__ import annotations

import posixpath

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.formats.run_record import require_run
from pipeline.formats.storage import Storage, resolve
from pipeline.planning.manifest import BATCH_ROWS, open_manifest, row_uri


def write_keep_manifest(output: str, dropped: pa.Array, destination: str) -> int:
    """Write the keep-one manifest to ``destination`` (a ``.parquet`` file, local or
    ``s3://``, atomically); return how many rows it holds.

    Args:
        output: the run's output folder (its ``run.json`` names the manifest).
        dropped: ids to leave out (:meth:`pipeline.curation.dedup.Duplicates.dropped`).
        destination: where to write.

    Raises:
        InputError: no run, or its manifest can no longer be opened.
    """
    run = require_run(Storage(output, create=False))
    manifest = open_manifest(run.config["manifest"])
    folder, name = posixpath.split(destination)
    kept = 0
    writer: pq.ParquetWriter | None = None
    with Storage(folder or ".").open_atomic(name) as stream:
        for file in manifest.files:
            fs, path = resolve(file.uri)
            with fs.open_input_file(path) as handle:
                for batch in pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS):
                    table = _kept_rows(pa.Table.from_batches([batch]), dropped, file.uri)
                    if writer is None:
                        writer = pq.ParquetWriter(stream, table.schema)
                    writer.write_table(table)
                    kept += table.num_rows
        if writer is not None:
            writer.close()
    return kept


def _kept_rows(table: pa.Table, dropped: pa.Array, file: str) -> pa.Table:
    """A manifest batch without the dropped ids, relative uris made absolute."""
    keep = pc.invert(pc.is_in(table["image_id"], value_set=dropped.cast(table["image_id"].type)))
    table = table.filter(keep)
    uris = table["uri"].to_pylist()
    resolved = [row_uri(u, file) for u in uris]
    if resolved != uris:
        index = table.schema.get_field_index("uri")
        table = table.set_column(index, "uri", pa.array(resolved, table["uri"].type))
    return table
