"""The driver at scale: planning time and peak memory for big manifests, and how fast a resume
with many finished shards reaches its first dispatch, on local disk or an S3 server.

    python benchmarks/scale.py [--rows 10000000 100000000 300000000]
        [--resume-shards 400000 --resume-on local] [--execute-shards 4000000] [--workdir DIR]

Planning runs the real driver (``python -m jobs.label ... --dry-run --model demo``) in a fresh
process per manifest size and reports its wall time and peak resident memory (VmHWM; a
process it started would count too), and that it never imported torch or Ray. The resume case
builds an output folder with that many finished shards (markers and a ledger) plus two pending
ones, on local disk or a local moto S3 server, and times a fresh driver process's steps up to
dispatch: planning against the previous plan, reconciling the ledger, persisting it, listing
the shards to run; with its peak memory. Targets (issue 17): the driver under 1.5 GB at 10M,
100M and 300M rows, planning time linear in the rows (a billion in under 10 minutes); a resume
with 400k finished shards on local disk ready to dispatch in under 60 s and 1.5 GB.

The execute case is the driver's ledger while a run executes, in a fresh process: a plan of
that many shards (a ShardTable built directly, as a billion-row manifest in shards of 256
plans into four million) persisted by ``Ledger.compact``, a few thousand entries written and
flushed as dispatch writes them, compacted again (as every 64 segments and at the end), and
read back by a fresh ledger; with the peak memory while running and after the read. Target: 4M shards well under 1.5 GB,
dominated by the columns (before the ledger held columns: 8 GB and 126 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from s3_server import MotoServer

ROOT = Path(__file__).resolve().parents[1]
FILE_ROWS = 1_000_000
CHILD = """
import sys, time
start = time.perf_counter()
from jobs.label import main
code = main(sys.argv[1:])
seconds = time.perf_counter() - start
peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]
import resource  # a process the planning started counts too (the largest, in MB)
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
used = resource.getrusage(resource.RUSAGE_SELF)  # CPU seconds: steadier than wall on a busy host
clean = 'torch' not in sys.modules and 'ray' not in sys.modules
peak = max(int(peak) / 1024, children)
print(f'RESULT {seconds:.2f} {peak:.0f} {clean} {code} {used.ru_utime + used.ru_stime:.1f}')
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
    args += ["--output", str(workdir / f"out-{rows}"), "--dry-run", "--model", "demo"]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    seconds, peak, clean, code, cpu = line.split()[1:]
    shards = next(x for x in result.stdout.splitlines() if x.startswith("plan:"))
    print(
        f"plan {rows:>10,} rows: {float(seconds):6.1f} s ({float(cpu):.1f} CPU s), driver peak "
        f"{float(peak):6.0f} MB, "
        f"no torch/ray imported: {clean}, exit {code}  ({shards})"
    )


RESUME_CHILD = """
import sys, time
start = time.perf_counter()
from pipeline.formats.ledger import Ledger, ShardState
from pipeline.formats.storage import Storage
from pipeline.planning.manifest import open_manifest
from pipeline.running.resume import plan_with_previous
storage = Storage(sys.argv[2])
plan, entries = plan_with_previous(storage, open_manifest(sys.argv[1]), int(sys.argv[3]))
planned = time.perf_counter() - start
Ledger(storage).compact(entries)  # what execute() persists before dispatching
todo = entries.to_run()
total = time.perf_counter() - start
peak = next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1]
import resource
used = resource.getrusage(resource.RUSAGE_SELF)
cpu = used.ru_utime + used.ru_stime
done = len(entries.done())
print(f'RESULT {planned:.2f} {total:.2f} {int(peak) / 1024:.0f} {done} {len(todo)} {cpu:.1f}')
"""


def resume_case(shards: int, workdir: Path, where: str) -> None:
    """A run with ``shards`` finished shards (and two pending), on local disk or a moto S3
    server; time a fresh driver's resume (in its own process) up to its first dispatch."""
    if where == "s3":
        with MotoServer() as server:
            endpoint = server.endpoint
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
            _resume(shards, "s3://bench", s3, "bench")
    else:
        from pyarrow import fs as pafs

        root = workdir / f"resume-{shards}"
        root.mkdir(parents=True, exist_ok=True)
        _resume(shards, str(root), pafs.LocalFileSystem(), str(root))


def _resume(shards: int, location: str, fs: Any, root: str) -> None:
    from pipeline.formats.layout import SHARDS, shard_path
    from pipeline.formats.ledger import Ledger, ShardEntry, ShardState
    from pipeline.formats.storage import Storage
    from pipeline.planning.manifest import open_manifest
    from pipeline.planning.plan import plan_shards

    size = 4  # rows per shard: the manifest stays small, the shard count large
    ids = [f"img_{i:08d}" for i in range((shards + 2) * size)]
    buffer = io.BytesIO()
    pq.write_table(pa.table({"image_id": ids, "uri": [f"{i}.jpg" for i in ids]}), buffer)
    with fs.open_output_stream(f"{root}/manifest.parquet") as stream:
        stream.write(buffer.getvalue())
    manifest = f"{location}/manifest.parquet"
    plan = plan_shards(open_manifest(manifest), size)
    storage = Storage(f"{location}/out")
    entries = {
        s.index: ShardEntry.planned(s)
        if s.index >= shards
        else replace(ShardEntry.planned(s), state=ShardState.DONE, attempts=1, images_done=size)
        for s in plan.shards
    }
    Ledger(storage).compact(entries)
    del entries, plan
    marker = json.dumps({"shard": 0}).encode()  # a resume lists markers, reads none here
    fs.create_dir(f"{root}/out/{SHARDS}")

    def put(index: int) -> None:  # one request each: set-up need not be atomic
        if location.startswith("s3://"):
            with fs.open_output_stream(f"{root}/out/{shard_path(index)}") as stream:
                stream.write(marker)
        else:
            Path(f"{root}/out/{shard_path(index)}").write_bytes(marker)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=64 if location.startswith("s3://") else 4) as pool:
        list(pool.map(put, range(shards)))
    print(f"(set-up: {shards:,} markers written in {time.perf_counter() - start:.0f} s)")
    planned, total, peak, done, todo, cpu = child_result(
        RESUME_CHILD, manifest, f"{location}/out", str(size)
    )
    kind = "S3 (moto)" if location.startswith("s3://") else "local disk"
    print(
        f"resume with {int(done):,} finished shards on {kind}: planned and reconciled in "
        f"{float(planned):.1f} s, ledger persisted, first dispatch possible after "
        f"{float(total):.1f} s ({float(cpu):.1f} CPU s), driver peak {float(peak):.0f} MB "
        f"({todo} to run)"
    )


def child_result(code: str, *args: str) -> list[str]:
    """Run ``code`` in a fresh Python process; the fields of the line it prints after
    ``RESULT`` (its output is raised when there is none)."""
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-2000:])
    return line.split()[1:]


EXECUTE_CHILD = """
import sys, time
from dataclasses import replace
import numpy as np
from pipeline.formats.ledger import Ledger, PlannedEntries, ShardState
from pipeline.formats.storage import Storage
from pipeline.planning.shard_table import ShardTable
n, out = int(sys.argv[1]), sys.argv[2]
k = np.arange(n)
digests = np.random.default_rng(0).integers(0, 256, (n, 32), dtype=np.uint8)
files = [f's3://images/part-{f:05d}.parquet' for f in range(n // 3907 + 1)]
shards = ShardTable(files, k, k // 3907, (k % 3907) * 256, np.full(n, 256), k * 256, digests)
start = time.perf_counter()
ledger = Ledger(Storage(out), flush_s=1e9)
ledger.compact(PlannedEntries(shards))  # what execute() persists before dispatching
planned = time.perf_counter() - start
written = 0
for i in range(0, n, max(1, n // 4000)):
    entry = replace(ledger.entries[i], attempts=1)
    ledger.write(entry, state=ShardState.DONE, images_done=256, node='h (node n1)')
    written += 1
ledger.flush()
ledger.compact()
compacted = time.perf_counter() - start
def hwm():
    return int(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])
running = hwm() / 1024
del ledger, entry  # a resume reads in a fresh driver: the plan's columns are held once
again = Ledger(Storage(out)).read()
total = time.perf_counter() - start
assert len(again) == n and len(again.done()) == written
print(f'RESULT {planned:.2f} {compacted:.2f} {total:.2f} {running:.0f} {hwm() / 1024:.0f} {written}')
"""


def execute_case(shards: int, workdir: Path) -> None:
    """The ledger of a run executing ``shards`` shards, in a fresh process (see above)."""
    out = workdir / f"execute-{shards}"
    planned, compacted, total, running, peak, written = child_result(
        EXECUTE_CHILD, str(shards), str(out)
    )
    print(
        f"execute {shards:,} shards: plan persisted in {float(planned):.1f} s, {int(written):,} "
        f"entries written and compacted by {float(compacted):.1f} s (driver peak "
        f"{float(running):.0f} MB), read back by {float(total):.1f} s (peak {float(peak):.0f} MB, "
        "the test's plan columns still held beside the read ones)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 10_000_000])
    parser.add_argument("--resume-shards", type=int, default=40_000)
    parser.add_argument("--resume-on", choices=("s3", "local"), default="s3")
    parser.add_argument("--execute-shards", type=int, default=0, help="e.g. 4000000")
    parser.add_argument("--workdir", type=Path, default=None, help="keep manifests here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        for rows in args.rows:
            plan_case(rows, workdir)
        if args.resume_shards:
            resume_case(args.resume_shards, workdir, args.resume_on)
        if args.execute_shards:
            execute_case(args.execute_shards, workdir)


if __name__ == "__main__":
    main()
