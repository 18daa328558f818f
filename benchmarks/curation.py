"""Search and dedup over many embeddings: time, peak memory, IVF recall against exact.

Writes a synthetic output folder (``run.json``, a marker per shard, ``embeddings/`` of random
unit vectors stored as float16, plus planted near-copies at cosine about 0.97) and prints:

* ``top_k`` (jobs.search): seconds and peak Python-heap memory (tracemalloc: numpy's arrays,
  not faiss's own memory, hence the process's peak RSS at the end) against one shard's size,
  and whether its answer equals a full sort;
* ``find_duplicates`` (jobs.dedup) with the exact ``flat`` index and the approximate ``ivf``
  one: seconds, peak memory, and the IVF's recall of the exact index's pairs.

Usage: ``python benchmarks/curation.py [--images 100000] [--dim 256] [--shard 5000]``.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.curation import DedupSettings, find_duplicates, top_k
from pipeline.formats.layout import embedding_table_path, shard_path
from pipeline.formats.shard_files import ShardMarker


def write_run(out: Path, vectors_nd: np.ndarray, shard: int) -> None:
    """A finished run in ``out`` holding ``vectors_nd`` as its embeddings, ``shard`` a file."""
    (out / "shards").mkdir(parents=True)
    (out / "embeddings").mkdir()
    (out / "run.json").write_text(json.dumps({"state": "finished", "config": {}}))
    for index, start in enumerate(range(0, len(vectors_nd), shard)):
        block = vectors_nd[start : start + shard].astype(np.float16)
        ids = pa.array([f"img{start + i:09d}" for i in range(len(block))])
        values = pa.FixedSizeListArray.from_arrays(
            pa.array(block.ravel(), pa.float16()), block.shape[1]
        )
        # No dictionary on the vectors: dictionary-encoded float16 reads ~7x slower.
        pq.write_table(
            pa.table({"image_id": ids, "embedding": values}),
            out / embedding_table_path(index),
            use_dictionary=["image_id"],
        )
        marker = ShardMarker(index, "bench", f"digest-{index}", len(block), 0, 0, {}, [])
        (out / shard_path(index)).write_text(json.dumps(marker.to_json()))


def measured(call):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return result, seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shard", type=int, default=5_000)
    parser.add_argument("--copies", type=int, default=1_000)
    parser.add_argument("--skip-flat", action="store_true", help="no exact dedup (large N)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    base = rng.normal(size=(args.images - args.copies, args.dim)).astype(np.float32)
    sources = rng.choice(len(base), size=args.copies, replace=False)
    noise = rng.normal(scale=0.25 / np.sqrt(args.dim), size=(args.copies, args.dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    copies = base[sources] + noise.astype(np.float32)
    vectors = np.concatenate([base, copies / np.linalg.norm(copies, axis=1, keepdims=True)])
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        write_run(out, vectors, args.shard)
        stored = vectors.astype(np.float16).astype(np.float32)
        print(f"{args.images:,} embeddings of {args.dim} (float16), shards of {args.shard:,}")
        query = rng.normal(size=args.dim)
        hits, seconds, peak = measured(lambda: top_k(str(out), query, 50))
        scores = stored @ (query / np.linalg.norm(query)).astype(np.float32)
        exact = [f"img{i:09d}" for i in np.lexsort((np.arange(len(scores)), -scores))[:50]]
        shard_mib = args.shard * args.dim * 4 / 2**20
        print(
            f"search top 50: {seconds:.2f} s, peak {peak:.0f} MiB (one shard as float32: "
            f"{shard_mib:.1f} MiB; all: {len(vectors) * args.dim * 4 / 2**20:.0f} MiB), "
            f"equal to a full sort: {[h.image_id for h in hits] == exact}"
        )
        found = {}
        for index in ("flat", "ivf"):
            if index == "flat" and args.skip_flat:
                continue
            settings = DedupSettings(threshold=0.95, index=index)
            duplicates, seconds, peak = measured(lambda s=settings: find_duplicates(str(out), s))
            table = duplicates.table.to_pylist()
            first = {}
            for row in table:
                first.setdefault(row["group"], row["image_id"])
            found[index] = {(first[r["group"]], r["image_id"]) for r in table} - {
                (f, f) for f in first.values()
            }
            print(
                f"dedup {index}: {seconds:.1f} s, peak {peak:.0f} MiB, "
                f"{duplicates.groups:,} groups, {len(found[index]):,} pairs"
            )
        if found.get("flat"):
            recall = len(found["ivf"] & found["flat"]) / len(found["flat"])
            print(f"IVF recall of the exact pairs: {recall:.4f} (nprobe 16, nlist 4 sqrt(N))")
    # faiss allocates outside Python's heap: the process's peak resident size covers it.
    print(f"process peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
