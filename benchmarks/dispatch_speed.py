"""How many shards one driver can dispatch: driver CPU per shard with a free stand-in model.

    python benchmarks/dispatch_speed.py [--shards 1500] [--workers 1]

The real job on an embedded Ray (manifest, ledger, the three stages of every shard, atomic
writes), on shards of one 16x16 image each, with a stand-in segmenter that computes nothing,
so the driver's own work is what is measured: its CPU seconds (user + system) from the first
dispatch to the last outcome, per shard. Printed: that figure, the ceiling it sets in shards/s
and in images/s at the default shard size (256), and the wall rate of this 2-core machine
(where the Ray workers compete with the driver for the CPUs). Target: 1 ms a shard.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gclip import Segmentation
from pipeline import RayBackend, RunConfig, run_labelling
from pipeline.config import ExecutionSettings
from pipeline.running import dispatch as dispatch_module

DEFAULT_SHARD_SIZE = ExecutionSettings().shard_size


class FreeSegmenter:
    """Labels every image class 0 at confidence 1, at no cost."""

    def segment(self, images, vocabulary, config=None):
        return [
            Segmentation(np.zeros(i.shape[:2], np.uint8), np.ones(i.shape[:2], np.float32))
            for i in images
        ]

    def __call__(self):
        return self


def driver_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "img").mkdir()
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(folder / "img" / "one.png")
        ids = [f"im{i:07d}" for i in range(args.shards)]
        uris = [str(folder / "img" / "one.png")] * args.shards
        pq.write_table(pa.table({"image_id": ids, "uri": uris}), folder / "m.parquet")
        (folder / "v.txt").write_text("thing\n")
        config = RunConfig.from_settings(
            str(folder / "m.parquet"),
            str(folder / "v.txt"),
            str(folder / "out"),
            pretrained="none",
            shard_size=1,
            num_workers=args.workers,
            model_cpus=0,
            merge_limit=0,
        )
        measured: dict[str, float] = {}
        dispatch = dispatch_module.dispatch

        def timed(*a, **kw):
            cpu, wall = driver_cpu(), time.perf_counter()
            try:
                return dispatch(*a, **kw)
            finally:
                measured.update(cpu=driver_cpu() - cpu, wall=time.perf_counter() - wall)

        dispatch_module.dispatch = timed
        import pipeline.running.coordinator as coordinator

        coordinator.dispatch = timed
        summary = run_labelling(config, RayBackend(factory=FreeSegmenter()))
    assert summary.ok and summary.shards == args.shards, summary
    per_shard = measured["cpu"] / args.shards
    print(f"{args.shards} shards of 1 image, {args.workers} model worker(s)")
    print(f"driver CPU per shard: {per_shard * 1e3:.2f} ms (target 1 ms)")
    print(
        f"ceiling of one driver: {1 / per_shard:,.0f} shards/s, "
        f"{DEFAULT_SHARD_SIZE / per_shard:,.0f} images/s at {DEFAULT_SHARD_SIZE} images a shard"
    )
    print(f"wall rate here: {args.shards / measured['wall']:,.0f} shards/s")


if __name__ == "__main__":
    main()
