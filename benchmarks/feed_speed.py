"""Can the host side keep a fast model fed? The real job, with a stand-in for the model.

    python benchmarks/feed_speed.py [--rate 150] [--images 1200] [--png-labels]

The job runs as users run it (Ray, a Parquet manifest of real 500x375 JPEG files, decoding,
RLE encoding, atomic writes of every shard file), but the model actor's segmenter is a stand-in
that sleeps ``1/rate`` s per image, as a GPU leaves the CPU free while it works, and returns a
fixed five-class label map per image size (so encoding costs what real labels cost). The
stand-in holds no CPU (``--model-cpus 0``): it computes nothing, and on a GPU node the one CPU
a real actor holds is a small share.

Printed: the stand-in's own rate, the job's steady rate (images between the first and the last
finished shard, over that time), their ratio, and the host cost per image measured in the
stages (reading, decoding, encoding, writing; CPU seconds in one core).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gclip import Segmentation
from gclip.demo_world import generate_scene
from pipeline import RayBackend, RunConfig, run_labelling
from pipeline.formats.ledger import Ledger
from pipeline.formats.storage import Storage

SIZE_HW = (375, 500)


class SleepingSegmenter:
    """Sleeps ``1/rate`` s an image; labels every image with the same five-class map."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._maps: dict[tuple[int, int], Segmentation] = {}

    def segment(self, images, vocabulary, config=None):
        time.sleep(len(images) / self.rate)
        return [self._map(image.shape[:2]) for image in images]

    def _map(self, size_hw: tuple[int, int]) -> Segmentation:
        if size_hw not in self._maps:
            h, w = size_hw
            ys, xs = np.mgrid[0:h, 0:w]
            labels = np.zeros(size_hw, np.uint8)
            for k, (cy, cx, r) in enumerate(
                [(0.3, 0.3, 0.2), (0.6, 0.7, 0.25), (0.8, 0.2, 0.15), (0.2, 0.8, 0.1)], start=1
            ):
                labels[(ys - cy * h) ** 2 + (xs - cx * w) ** 2 < (r * min(h, w)) ** 2] = k
            confidence = np.full(size_hw, 0.9, np.float32)
            self._maps[size_hw] = Segmentation(labels, confidence)
        return self._maps[size_hw]

    def __call__(self):
        return self


def make_images(folder: Path, count: int) -> None:
    """``count`` JPEG files of 500x375 demo-world scenes, and their manifest."""
    rng = np.random.default_rng(0)
    scenes = [generate_scene(rng, SIZE_HW, max_shapes=6).image_hwc_uint8 for _ in range(16)]
    rows = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(scenes[i % 16]).save(path, quality=90)
        rows.append({"image_id": f"img_{i:06d}", "uri": str(path)})
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    (folder / "vocabulary.txt").write_text("background\nred\ngreen\nblue\nyellow\n")


class TimedBackend(RayBackend):
    """Notes when each shard attempt ends, for the steady rate."""

    def __init__(self, factory) -> None:
        super().__init__(factory=factory)
        self.ended: list[tuple[float, int]] = []

    def executor(self, config, spec, settings):
        executor = super().executor(config, spec, settings)
        wait = executor.wait

        def timed_wait():
            outcomes = wait()
            for outcome in outcomes:
                if outcome.result is not None:
                    self.ended.append((time.perf_counter(), outcome.result.images_done))
            return outcomes

        executor.wait = timed_wait
        return executor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=150.0, help="stand-in images/s")
    parser.add_argument("--images", type=int, default=1200)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--png-labels", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_images(folder, args.images)
        config = RunConfig.from_settings(
            manifest=str(folder / "manifest.parquet"),
            vocabulary=str(folder / "vocabulary.txt"),
            output=str(folder / "out"),
            model="demo",
            shard_size=args.shard_size,
            png_labels=args.png_labels,
            model_cpus=0,
            merge_limit=0,
        )
        backend = TimedBackend(SleepingSegmenter(args.rate))
        summary = run_labelling(config, backend)
        assert summary.ok and summary.images_labelled == args.images, summary
        entries = Ledger(Storage(str(folder / "out"))).read().values()
        host_ms = 1000 * sum(e.host_seconds for e in entries) / args.images
    (first, _), (last, _) = backend.ended[0], backend.ended[-1]
    steady_images = sum(n for _, n in backend.ended[1:])
    job_rate = steady_images / (last - first)
    cores = os.cpu_count() or 1
    print(
        f"{args.images} JPEG images 500x375, shards of {args.shard_size}, "
        f"PNG label maps {'on' if args.png_labels else 'off'}, {cores} cores"
    )
    print(f"stand-in model:   {args.rate:7.1f} images/s (sleeps, holds no CPU)")
    print(f"job, steady:      {job_rate:7.1f} images/s")
    print(
        f"host cost:        {host_ms:7.2f} ms an image in one core "
        f"(reading, decoding, encoding, writing): at most {1000 * cores / host_ms:.0f} "
        f"images/s on {cores} cores"
    )
    print(
        f"feed ratio {job_rate / args.rate:.2f} at stand-in {args.rate:.0f} img/s "
        f"(job {job_rate:.0f} img/s)"
    )


if __name__ == "__main__":
    main()
