"""The driver at scale: planning time and peak memory for big manifests, and how fast a resume
with many finished shards reaches its first dispatch on an S3 server.

    python benchmarks/scale.py [--rows 1000000 10000000] [--resume-shards 40000]

Planning runs the real driver (``python -m jobs.label ... --dry-run``) in a fresh process per
manifest size and reports its wall time and peak resident memory (VmHWM), and that it never
imported torch or Ray. The resume case builds, on a local moto S3 server, an output folder
with that many finished shards (markers and a ledger) plus two pending ones, and times the
driver's steps up to dispatch: planning against the previous plan, reconciling the ledger,
persisting it. Targets (issue 8): 10M rows plan in under 60 s with the driver under 1 GB; a
resume with 40k finished shards reaches its first dispatch in under 60 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
FILE_ROWS = 1_000_000
CHILD = """
import sys, time
start = time.perf_counter()
from jobs.label import main
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]
clean = 'torch' not in sys.modules and 'ray' not in sys.modules
print(f'RESULT {seconds:.2f} {int(peak) / 1024:.0f} {clean} {code}')
"""


def write_manifest(folder: Path, rows: int) -> None:
    """``rows`` rows in files of a million: ids, S3 uris, sizes (as a real manifest has)."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, start in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - start)
        numbers = np.arange(start, start + n)
        ids = np.char.add("img_", np.char.zfill(numbers.astype(str), 10))
        table = pa.table(
            {
                "image_id": pa.array(ids),
                "uri": pa.array(np.char.add(np.char.add("s3://images/", ids), ".jpg")),
                "width": pa.array(np.full(n, 500, np.int32)),
                "height": pa.array(np.full(n, 375, np.int32)),
            }
        )
        pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=128 * 1024)


def plan_case(rows: int, workdir: Path) -> None:
    manifest = workdir / f"manifest-{rows}"
    if not manifest.exists():
        write_manifest(manifest, rows)
    (workdir / "vocab.txt").write_text("road, street\ncar\nperson, pedestrian\n")
    args = ["--manifest", str(manifest), "--vocabulary", str(workdir / "vocab.txt")]
    args += ["--output", str(workdir / f"out-{rows}"), "--dry-run"]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    seconds, peak, clean, code = line.split()[1:]
    shards = next(x for x in result.stdout.splitlines() if x.startswith("plan:"))
    print(
        f"plan {rows:>10,} rows: {float(seconds):6.1f} s, driver peak {float(peak):6.0f} MB, "
        f"no torch/ray imported: {clean}, exit {code}  ({shards})"
    )


def resume_case(shards: int, workdir: Path) -> None:
    """A run with ``shards`` finished shards (and two pending) on S3; time the resume."""
    from pipeline.formats.layout import shard_path
    from pipeline.formats.ledger import Ledger, ShardEntry, ShardState
    from pipeline.formats.storage import Storage
    from pipeline.planning.manifest import open_manifest
    from pipeline.planning.plan import plan_shards
    from pipeline.running.resume import plan_with_previous

    with moto_server() as endpoint:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="x",
            AWS_SECRET_ACCESS_KEY="x",
            AWS_DEFAULT_REGION="us-east-1",
        )
        from pyarrow import fs as pafs

        s3 = pafs.S3FileSystem(
            endpoint_override=endpoint.removeprefix("http://"),
            scheme="http",
            allow_bucket_creation=True,
            region="us-east-1",
        )
        s3.create_dir("bench")
        size = 4  # rows per shard: the manifest stays small, the shard count large
        ids = [f"img_{i:08d}" for i in range((shards + 2) * size)]
        buffer = io.BytesIO()
        pq.write_table(pa.table({"image_id": ids, "uri": [f"{i}.jpg" for i in ids]}), buffer)
        with s3.open_output_stream("bench/manifest.parquet") as stream:
            stream.write(buffer.getvalue())
        manifest = open_manifest("s3://bench/manifest.parquet")
        plan = plan_shards(manifest, size)
        storage = Storage("s3://bench/out")
        entries = {
            s.index: ShardEntry.planned(s)
            if s.index >= shards
            else ShardEntry(
                s.index,
                s.file,
                s.start,
                s.count,
                s.first_id,
                s.digest,
                state=ShardState.DONE,
                attempts=1,
                images_done=size,
            )
            for s in plan.shards
        }
        Ledger(storage).compact(entries)
        marker = json.dumps({"shard": 0}).encode()  # a resume lists markers, reads none here

        def put(index: int) -> None:  # one request each: set-up need not be atomic
            with s3.open_output_stream(f"bench/out/{shard_path(index)}") as stream:
                stream.write(marker)

        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=64) as pool:
            list(pool.map(put, range(shards)))
        print(f"(set-up: {shards:,} markers written in {time.perf_counter() - start:.0f} s)")

        start = time.perf_counter()
        plan, entries = plan_with_previous(
            storage, open_manifest("s3://bench/manifest.parquet"), size
        )
        planned = time.perf_counter() - start
        Ledger(storage).compact(entries)  # what execute() persists before the first dispatch
        total = time.perf_counter() - start
        done = sum(e.state == ShardState.DONE for e in entries.values())
        print(
            f"resume with {done:,} finished shards on S3 (moto): planned and reconciled in "
            f"{planned:.1f} s, ledger persisted, first dispatch possible after {total:.1f} s "
            f"({len(plan.shards) - done} to run)"
        )


class moto_server:
    """A moto S3 server on a free loopback port, for the length of a ``with`` block."""

    def __enter__(self) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--resume-shards", type=int, default=40_000)
    parser.add_argument("--workdir", type=Path, default=None, help="keep manifests here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for rows in args.rows:
            plan_case(rows, workdir)
        if args.resume_shards:
            resume_case(args.resume_shards, workdir)


if __name__ == "__main__":
    main()
