"""How many shards one driver can dispatch: driver CPU per shard with a free stand-in model.

    python benchmarks/dispatch_speed.py [--shards 1500] [--workers 1]

The real job on an embedded Ray (manifest, ledger, the three stages of every shard, atomic
writes), on shards of one 16x16 image each, with a stand-in segmenter that computes nothing,
so the driver's own work is what is measured: its CPU seconds (user + system, every thread)
from the first dispatch to the last outcome, per shard. Printed: that figure, split into the
main thread and Ray's threads; the part of it that the driver spends idle (Ray's threads keep
a connection alive at a steady rate, measured for 2 s before the dispatch: on a slow machine
it weighs on every shard, on a fast one it vanishes); the ceiling of one driver in shards/s
and in images/s at the default shard size (256), from the cost net of that idle part; and the
wall rate of this 2-core machine (where the Ray workers compete with the driver for the
CPUs). Target: 1 ms a shard.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
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


def main_thread_cpu() -> float:
    """This thread's CPU seconds (the driver's own Python; the rest is Ray's threads)."""
    return time.thread_time() if threading.current_thread() is threading.main_thread() else 0.0


def idle_rate(seconds: float = 2.0) -> float:
    """The driver's CPU seconds per second while it waits on nothing."""
    cpu = driver_cpu()
    time.sleep(seconds)
    return (driver_cpu() - cpu) / seconds


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
            measured["idle"] = idle_rate()
            cpu, own, wall = driver_cpu(), main_thread_cpu(), time.perf_counter()
            try:
                return dispatch(*a, **kw)
            finally:
                measured.update(
                    cpu=driver_cpu() - cpu,
                    own=main_thread_cpu() - own,
                    wall=time.perf_counter() - wall,
                )

        dispatch_module.dispatch = timed
        import pipeline.running.coordinator as coordinator

        coordinator.dispatch = timed
        summary = run_labelling(config, RayBackend(factory=FreeSegmenter()))
    assert summary.ok and summary.shards == args.shards, summary
    n, ms = args.shards, 1e3 / args.shards
    idle = measured["idle"] * measured["wall"]
    net = (measured["cpu"] - idle) / n
    print(f"{n} shards of 1 image, {args.workers} model worker(s), {os.cpu_count()} CPUs")
    print(
        f"driver CPU per shard: {measured['cpu'] * ms:.2f} ms (target 1 ms): main thread "
        f"{measured['own'] * ms:.2f} ms, Ray's threads {(measured['cpu'] - measured['own']) * ms:.2f}"
        f" ms; idle share {idle * ms:.2f} ms ({measured['idle'] * 1e3:.1f} ms/s idle)"
    )
    shards_s = (1 - measured["idle"]) / net
    print(
        f"ceiling of one driver: {shards_s:,.0f} shards/s ({net * 1e3:.2f} ms a shard net of "
        f"idle), {DEFAULT_SHARD_SIZE * shards_s:,.0f} images/s at {DEFAULT_SHARD_SIZE} images "
        "a shard"
    )
    print(f"wall rate here: {n / measured['wall']:,.0f} shards/s")


if __name__ == "__main__":
    main()
