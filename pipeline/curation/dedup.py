"""Near-duplicate groups of a run's images, by the cosine similarity of their embeddings.

Two images are linked when their embeddings' cosine similarity is above ``threshold``; groups
are the connected components of those links (``scipy.sparse.csgraph``), so a chain of
near-copies is one group. The neighbours come from faiss (``faiss-cpu``: the maintained
library for this, with exact and approximate indexes behind one interface):

* ``flat`` (exact): an ``IndexFlatIP`` holding every vector as float32, queried one shard at a
  time with ``range_search``. Exact; memory ``N x D x 4`` bytes, time ``N^2 x D``: the
  default up to :attr:`DedupSettings.flat_limit` embeddings.
* ``ivf`` (approximate, past that): an ``IndexIVFScalarQuantizer`` (fp16 codes, inner
  product), its coarse centroids trained on an evenly spaced sample, the vectors added shard by
  shard into blocks of at most ``block_size`` vectors, each block's lists written to a scratch
  folder and merged into one file of on-disk inverted lists (``faiss.contrib.ondisk``,
  memory-mapped: the index may exceed memory, the page cache holds what the searches touch);
  each shard is then range-searched over ``nprobe`` lists. Disk ``N x D x 2`` bytes (twice,
  briefly, while merging), memory one block plus the centroids. Recall below 1 is possible (a
  copy whose list is not probed); the tests and ``benchmarks/curation.py`` measure it
  against ``flat``.

Everything after the index is exact and bounded by the number of grouped images: the
``similarity`` written is recomputed from the float32 embeddings (each member against its
group's first member), in a second pass over the shards.

Order is deterministic: a group's first member is its earliest image in run order (shard,
then row: the manifest's order), groups are numbered by their first member, members follow
run order.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from pipeline.curation.embeddings import EmbeddedRun, open_embeddings, read_shards
from pipeline.formats.layout import DUPLICATES
from pipeline.formats.storage import Storage

DEFAULT_THRESHOLD = 0.95  # suits real CLIP models: re-encoded copies sit far above it


@dataclass(frozen=True, slots=True)
class DedupSettings:
    """How near-duplicates are found.

    Attributes:
        threshold: cosine similarity above which two images are linked, in (-1, 1).
        index: ``flat`` (exact), ``ivf`` (approximate) or ``auto`` (``flat`` up to
            ``flat_limit`` embeddings).
        flat_limit: embeddings an exact index takes under ``auto``: its search compares
            every pair (N^2 D multiply-adds: minutes at 100k, hours at 1M on a CPU).
        nlist: IVF lists (default ``4 sqrt(N)``, at most one per 39 training vectors).
        nprobe: IVF lists searched per query (more: higher recall, slower).
        train_size: at most this many vectors train the IVF centroids.
        block_size: at most this many vectors are added to an IVF block in memory before its
            lists go to disk.
        scratch: the folder for the on-disk lists (default: the system temp), removed after.
    """

    threshold: float = DEFAULT_THRESHOLD
    index: str = "auto"
    flat_limit: int = 100_000
    nlist: int | None = None
    nprobe: int = 16
    train_size: int = 100_000
    block_size: int = 1_000_000
    scratch: str | None = None

    def __post_init__(self) -> None:
        if not -1 < self.threshold < 1:
            raise ValueError(f"threshold must be in (-1, 1), not {self.threshold}.")
        if self.index not in ("auto", "flat", "ivf"):
            raise ValueError(f"index must be auto, flat or ivf, not {self.index!r}.")


@dataclass(frozen=True, slots=True)
class Duplicates:
    """The groups found.

    Attributes:
        table: ``group`` int64, ``image_id``, ``similarity`` float64 (to the group's first
            member, 1.0 for it), sorted by group then run order.
        images: embeddings compared.
        index: the index used (``flat`` or ``ivf``).
    """

    table: pa.Table
    images: int
    index: str

    @property
    def groups(self) -> int:
        return len(set(self.table["group"].to_pylist()))

    def dropped(self) -> pa.Array:
        """Ids of every member but each group's first: what a keep-one manifest leaves out."""
        group = self.table["group"].to_numpy()
        later = np.ones(len(group), bool)
        later[:1] = False
        later[1:] = group[1:] == group[:-1]
        return self.table["image_id"].combine_chunks().filter(pa.array(later))


def find_duplicates(output: str, settings: DedupSettings | None = None) -> Duplicates:
    """Group a run's near-duplicate images (finished shards with embeddings).

    Raises:
        InputError: not a run, or no embeddings (:func:`open_embeddings`).
    """
    settings = settings or DedupSettings()
    run = open_embeddings(output)
    kind = settings.index
    if kind == "auto":
        kind = "flat" if run.total <= settings.flat_limit else "ivf"
    with tempfile.TemporaryDirectory(prefix="gclip-dedup-", dir=settings.scratch) as scratch:
        index = _flat(run) if kind == "flat" else _ivf(run, settings, Path(scratch))
        first_a, second_a = _links(run, index, settings.threshold)
        del index  # its memory-mapped lists, before their folder goes
    group_n, first_g = _components(first_a, second_a, run.total)
    return Duplicates(_table(run, group_n, first_g), run.total, kind)


def write_duplicates(output: str, duplicates: Duplicates) -> str:
    """Write ``OUTPUT/duplicates.parquet`` atomically; return its location."""
    storage = Storage(output, create=False)
    with storage.open_atomic(DUPLICATES) as stream:
        pq.write_table(duplicates.table, stream)
    return storage.uri(DUPLICATES)


def _flat(run: EmbeddedRun) -> object:
    import faiss

    index = faiss.IndexFlatIP(run.dimension)
    for part in read_shards(run):
        index.add(part.vectors_nd)
    return index


def _ivf(run: EmbeddedRun, settings: DedupSettings, scratch: Path) -> object:
    """An IVF index with fp16 codes on on-disk lists: centroids from an evenly spaced sample,
    then the vectors added shard by shard into blocks written to ``scratch`` and merged."""
    import faiss
    from faiss.contrib.ondisk import merge_ondisk

    step = max(1, math.ceil(run.total / settings.train_size))
    offsets = run.offsets
    train_nd = np.concatenate(
        [
            part.vectors_nd[(-offset) % step :: step]
            for part, offset in zip(read_shards(run), offsets.tolist(), strict=True)
        ]
    )
    nlist = settings.nlist or max(1, min(int(4 * math.sqrt(run.total)), len(train_nd) // 39))
    quantizer = faiss.IndexFlatIP(run.dimension)
    trained = faiss.IndexIVFScalarQuantizer(
        quantizer, run.dimension, nlist, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )
    trained.cp.seed = 1234  # k-means seeded: the same run gives the same lists, the same groups
    trained.train(train_nd)
    del train_nd
    trained_path = str(scratch / "trained.index")
    faiss.write_index(trained, trained_path)
    blocks: list[str] = []
    block = faiss.read_index(trained_path)
    for part, offset in zip(read_shards(run), offsets.tolist(), strict=True):
        rows = len(part.vectors_nd)
        block.add_with_ids(part.vectors_nd, np.arange(offset, offset + rows, dtype=np.int64))
        if block.ntotal >= settings.block_size:
            blocks.append(_write_block(block, scratch, len(blocks)))
            block = faiss.read_index(trained_path)
    if block.ntotal or not blocks:
        blocks.append(_write_block(block, scratch, len(blocks)))
    del block
    index = faiss.read_index(trained_path)
    merge_ondisk(index, blocks, str(scratch / "lists.ivfdata"))
    for path in blocks:  # merged: the blocks' copies of the lists are no longer needed
        Path(path).unlink()
    faiss.extract_index_ivf(index).nprobe = min(settings.nprobe, nlist)
    return index


def _write_block(block: Any, scratch: Path, number: int) -> str:
    import faiss

    path = str(scratch / f"block-{number:06d}.index")
    faiss.write_index(block, path)
    return path


def _links(run: EmbeddedRun, index: object, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """``(a, b)`` int64 run-wide rows with ``a < b`` of every pair found above ``threshold``
    (each pair once, whichever of its two images found it)."""
    firsts, seconds = [], []
    for part, offset in zip(read_shards(run), run.offsets.tolist(), strict=True):
        lims, _, found = index.range_search(part.vectors_nd, threshold)  # type: ignore[attr-defined]
        queries = offset + np.repeat(
            np.arange(len(part.vectors_nd)), np.diff(lims).astype(np.int64)
        )
        other = found.astype(np.int64)
        keep = other != queries
        firsts.append(np.minimum(queries, other)[keep])
        seconds.append(np.maximum(queries, other)[keep])
    pairs = np.unique(np.stack([np.concatenate(firsts), np.concatenate(seconds)], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1]


def _components(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(group_n, first_g)``: per run-wide row its group number (-1: in no group), and per
    group its first member's row; groups numbered by first member."""
    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    count, label_n = connected_components(graph, directed=False)
    size_c = np.bincount(label_n, minlength=count)
    first_c = np.full(count, n, np.int64)
    np.minimum.at(first_c, label_n, np.arange(n))
    grouped_c = np.flatnonzero(size_c > 1)
    grouped_c = grouped_c[np.argsort(first_c[grouped_c], kind="stable")]
    number_c = np.full(count, -1, np.int64)
    number_c[grouped_c] = np.arange(len(grouped_c))
    return number_c[label_n], first_c[grouped_c]


def _table(run: EmbeddedRun, group_n: np.ndarray, first_g: np.ndarray) -> pa.Table:
    """The groups' rows, similarities exact from float32 vectors (a second pass)."""
    first_vectors: dict[int, np.ndarray] = {}  # group -> its first member's vector
    pieces: list[pa.Table] = []
    for part, offset in zip(read_shards(run), run.offsets.tolist(), strict=True):
        rows = np.flatnonzero(group_n[offset : offset + len(part.vectors_nd)] >= 0)
        if not len(rows):
            continue
        groups = group_n[offset + rows]
        for row, group in zip(rows.tolist(), groups.tolist(), strict=True):
            if first_g[group] == offset + row:  # firsts come first in run order
                first_vectors[group] = part.vectors_nd[row]
        reference = np.stack([first_vectors[g] for g in groups.tolist()])
        similarity = np.einsum("nd,nd->n", part.vectors_nd[rows], reference).astype(np.float64)
        similarity[first_g[groups] == offset + rows] = 1.0
        pieces.append(
            pa.table(
                {
                    "group": pa.array(groups, pa.int64()),
                    "image_id": part.ids.take(pa.array(rows)),
                    "similarity": pa.array(similarity, pa.float64()),
                    "_row": pa.array(offset + rows, pa.int64()),
                }
            )
        )
    if not pieces:
        return _empty(run)
    table = pa.concat_tables(pieces)
    order = np.lexsort((table["_row"].to_numpy(), table["group"].to_numpy()))
    return table.take(pa.array(order)).drop_columns(["_row"])


def _empty(run: EmbeddedRun) -> pa.Table:
    """No group: an empty table with the run's id type."""
    id_type = next(read_shards(run, run.shards[:1])).ids.type
    schema = pa.schema([("group", pa.int64()), ("image_id", id_type), ("similarity", pa.float64())])
    return schema.empty_table()
