"""Peak memory of labelling the red team's images (thin strips, a PNG bomb, a 108-Mpx and an
81-Mpx photo, among good scenes) on the demo model, with time per case.

Each case runs in a fresh process. In-process (the default), that process does all the
work itself: the driver, the decode, the model and the encode together, so its peak bounds a
worker's. With ``--ray``, the job runs on an embedded Ray and the peak printed is the model
worker's own (``VmHWM`` of the actor's process, read before it is shut down); the decode and
encode host tasks run in other processes there. The target is under 2 GB a worker.

    python benchmarks/bad_images.py [--images-per-call 2] [--ray]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASE = """
import json, resource, sys, time
sys.path.insert(0, {tests!r})
from pipeline import LocalBackend, RayBackend, load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings
peaks = []


class MeasuredRay(RayBackend):
    def executor(self, config, spec, settings):
        executor = super().executor(config, spec, settings)
        shutdown = executor.shutdown

        def measured():
            import ray
            for actor in executor.actors:
                pid = ray.get(actor.pid.remote())
                status = open(f"/proc/{{pid}}/status").read()
                peaks.append(int(status.split("VmHWM:")[1].split()[0]) / 1024)
            shutdown()

        executor.shutdown = measured
        return executor


values = json.loads({values!r})
backend = MeasuredRay() if {ray!r} else LocalBackend()
start = time.perf_counter()
summary = run_labelling(load_run_config(values, {{}}, shipped_settings), backend)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": time.perf_counter() - start, "peak_mb": max(peaks or [own]),
    "labelled": summary.images_labelled, "failed": summary.images_failed}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images-per-call", type=int, default=2)
    parser.add_argument("--ray", action="store_true", help="measure a Ray model worker")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from test_bad_images_job import write_bad_folder

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = write_bad_folder(folder)
        large = [n for n in names if n.startswith(("photo", "bomb", "strip"))]
        cases = {"all together": names, **{name: [name] for name in large}}
        print(f"{'case':<28} {'peak MB':>8} {'seconds':>8}  labelled / failed")
        for case, ids in cases.items():
            import pyarrow as pa
            import pyarrow.parquet as pq

            manifest = folder / f"{abs(hash(case))}.parquet"
            pq.write_table(pa.table({"image_id": ids, "uri": [f"img/{n}" for n in ids]}), manifest)
            values = {
                "manifest": str(manifest),
                "vocabulary": str(folder / "v.txt"),
                "output": str(folder / f"out-{abs(hash(case))}"),
                "model": "demo",
                "shard_size": 16,
                "images_per_call": args.images_per_call,
            }
            code = CASE.format(tests=str(ROOT / "tests"), values=json.dumps(values), ray=args.ray)
            done = subprocess.run(
                [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
            )
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{case:<28} {result['peak_mb']:>8.0f} {result['seconds']:>8.1f}  "
                f"{result['labelled']} / {result['failed']}"
            )


if __name__ == "__main__":
    main()
