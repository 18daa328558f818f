"""Throughput of the whole labelling pipeline (one Ray worker) against the bare segmenter.

Both label the same images with the same model and settings. The bare segmenter gets decoded
arrays in memory; the pipeline reads PNG files, decodes them on threads, segments, encodes RLE,
and writes shard files atomically, its stages overlapping on Ray. Prints images/s of each and
their ratio (target >= 0.85), for the steady state (images finished between the first and the
last shard, over that time) and end to end (including Ray start and the model build).

    python benchmarks/pipeline_speed.py [--images 192] [--model demo]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

import gclip
from gclip.demo_world import generate_scene, vocabulary_text
from pipeline import load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings

sys.path.insert(0, str(Path(__file__).parent))
from feed_speed import TimedBackend


def make_images(folder: Path, count: int, size: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    arrays, rows = [], []
    for i in range(count):
        scene = generate_scene(rng, (size, size), max_shapes=6)
        path = folder / f"{i}.png"
        Image.fromarray(scene.image_hwc_uint8).save(path)
        arrays.append(scene.image_hwc_uint8)
        rows.append({"image_id": i, "uri": str(path)})
    pq.write_table(pa.Table.from_pylist(rows), folder / "manifest.parquet")
    (folder / "vocabulary.txt").write_text(vocabulary_text())
    return arrays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--shard-size", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        arrays = make_images(folder, args.images, args.size)
        values = {
            "manifest": str(folder / "manifest.parquet"),
            "vocabulary": str(folder / "vocabulary.txt"),
            "output": str(folder / "out"),
            "model": args.model,
            "pretrained": args.pretrained,
            "inference": {"short_side": None, "batch_size": 32},  # windows: the model's own
            "shard_size": args.shard_size,
            "num_workers": 1,
        }
        config = load_run_config(values, {}, shipped_settings)
        # Bare segmenter: the same model, settings and call size as the worker uses.
        segmenter = gclip.load_segmenter(args.model, args.pretrained, config.labelling.method)
        vocabulary = gclip.parse_text(vocabulary_text())
        settings = config.labelling.inference
        segmenter.segment(arrays[:2], vocabulary, settings)  # warm-up
        start = time.perf_counter()
        for i in range(0, len(arrays), config.execution.images_per_call):
            segmenter.segment(
                arrays[i : i + config.execution.images_per_call], vocabulary, settings
            )
        bare_s = time.perf_counter() - start

        start = time.perf_counter()
        backend = TimedBackend(None)
        summary = run_labelling(config, backend)  # starts and stops an embedded Ray
        wall_s = time.perf_counter() - start
    assert summary.ok
    # Steady state: after the first shard (whose time holds the warm-up: first forward, text
    # embeddings), images finished over the time they took; stages overlap, so per-shard
    # stage times would count overlapped time twice.
    (first, _), (last, _) = backend.ended[0], backend.ended[-1]
    steady_images, shard_s = sum(n for _, n in backend.ended[1:]), last - first
    n = args.images
    print(
        f"{n} images {args.size}x{args.size}, model {args.model}, shards of {args.shard_size}, 1 worker"
    )
    print(f"bare segmenter:            {n / bare_s:7.2f} images/s")
    print(
        f"pipeline, steady state:    {steady_images / shard_s:7.2f} images/s  ratio {(steady_images / shard_s) / (n / bare_s):.2f}"
    )
    print(
        f"pipeline, end to end:      {n / wall_s:7.2f} images/s  ratio {bare_s / wall_s:.2f} (incl. Ray start, model build)"
    )


if __name__ == "__main__":
    main()
