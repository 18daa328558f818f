"""Time and peak memory of drawing a comparison's sample from a large manifest.

One streaming pass over the ids (a sha256 per row, the ``N`` smallest kept), then only the
row groups holding the chosen rows are read, every column. Memory should stay near one batch
of ids whatever the manifest's size.

    python benchmarks/compare_sample.py [--rows 1000000] [--sample 32] [--files 4]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.comparing import draw_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--files", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        per_file = -(-args.rows // args.files)
        for f in range(args.files):
            ids = [f"img_{i:09d}" for i in range(f * per_file, min(args.rows, (f + 1) * per_file))]
            table = pa.table({"image_id": ids, "uri": [f"images/{i}.jpg" for i in ids]})
            pq.write_table(table, f"{folder}/part-{f}.parquet", row_group_size=100_000)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        start = time.perf_counter()
        sample = draw_sample(folder, args.sample, seed=0)
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.rows:,} rows in {args.files} files: a sample of {sample.num_rows} in "
        f"{seconds:.2f} s ({args.rows / seconds / 1e6:.2f} M rows/s); peak RSS {peak:.0f} MB "
        f"({peak - before:+.0f} MB over the manifest's writing)"
    )


if __name__ == "__main__":
    main()
