"""Tar shards against separate files, on S3: images read and decoded per second, and requests.

    python benchmarks/tar_read.py [--images 1024] [--per-tar 512] [--shard-size 256]

On a local S3 server (moto's server mode, loopback), the same JPEGs (500 x 375) are stored
twice: as separate objects, and as WebDataset tars of ``--per-tar`` images (img2dataset's
layout: ``00000.tar`` holding ``000000000.jpg``, ``.txt``, ``.json``). ``jobs.manifest`` lists
each; the planner cuts ``--shard-size`` shards (never across a tar); every shard is then read
and decoded as the labelling job's decode stage does it
(:func:`pipeline.running.stages._decoded`: files on ``--threads`` threads, one request each;
a tar's members from one forward read of the tar, decoded on the same threads).

Printed: images per second of each layout and their ratio, and the requests per shard that
moto's request log shows (a tar member costs a HEAD and ceil(span / 8 MiB) ranged GETs per
shard; a file, one GET). moto answers from memory in one Python process: a request costs less
latency than on a real object store, so the ratio here is a floor, not a forecast.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs
from PIL import Image
from s3_server import MotoServer

from gclip.demo_world import generate_scene
from pipeline.planning.manifest import open_manifest
from pipeline.planning.manifest_writer import write_manifest
from pipeline.planning.plan import plan_shards, read_shard
from pipeline.planning.sources import list_sources
from pipeline.running.stages import _decoded

SIZE_HW = (375, 500)
BUCKET = "bench"


def jpegs(count: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(generate_scene(rng, SIZE_HW).image_hwc_uint8).save(
            buffer, "JPEG", quality=90
        )
        out.append(buffer.getvalue())
    return out


def upload(fs: pafs.FileSystem, images: list[bytes], per_tar: int) -> None:
    """``bench/files/NNNNNNNNN.jpg`` and ``bench/tars/NNNNN.tar`` with the same images."""
    for k, data in enumerate(images):
        with fs.open_output_stream(f"{BUCKET}/files/{k:09d}.jpg") as stream:
            stream.write(data)
    for first in range(0, len(images), per_tar):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for k in range(first, min(first + per_tar, len(images))):
                members = {"jpg": images[k], "txt": b"a caption", "json": json.dumps({"k": k})}
                for ext, content in members.items():
                    data = content.encode() if isinstance(content, str) else content
                    info = tarfile.TarInfo(f"{k:09d}.{ext}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
        with fs.open_output_stream(f"{BUCKET}/tars/{first // per_tar:05d}.tar") as stream:
            stream.write(buffer.getvalue())


def read_all(
    server: MotoServer, source: str, manifest: str, shard_size: int, threads: int
) -> tuple[float, int, list[int]]:
    """(images per second, images, requests per shard) of reading ``source``'s shards."""
    listing = list_sources([source])
    write_manifest(listing.rows, manifest, extra=listing.columns)
    shards = list(plan_shards(open_manifest(manifest), shard_size).shards)
    requests, images, seconds = [], 0, 0.0
    for shard in shards:
        records = read_shard(shard)
        before = server.requests()
        start = time.perf_counter()
        for _, image in _decoded(records, threads, None):
            assert isinstance(image, np.ndarray), image  # a failure would flatter the figure
            images += 1
        seconds += time.perf_counter() - start
        time.sleep(0.5)  # for the server to log the last requests
        requests.append(server.requests() - before)
    return images / seconds, images, requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--per-tar", type=int, default=512, help="images per tar")
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=4, help="decode threads (the default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, MotoServer(Path(tmp) / "moto.log") as server:
        endpoint = server.endpoint
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        os.environ.update({"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", **env})
        fs = pafs.S3FileSystem(
            endpoint_override=endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(BUCKET)
        images = jpegs(args.images)
        upload(fs, images, args.per_tar)
        size = sum(map(len, images)) / len(images) / 1024
        print(f"{len(images)} JPEGs {SIZE_HW[1]}x{SIZE_HW[0]} ({size:.0f} KiB each) on moto")
        results = {}
        for layout in ("files", "tars"):
            manifest = f"{tmp}/{layout}.parquet"
            rate, count, requests = read_all(
                server, f"s3://{BUCKET}/{layout}", manifest, args.shard_size, args.threads
            )
            results[layout] = rate
            print(
                f"  {layout:5}: {count} images in {len(requests)} shards, {rate:7.1f} images/s "
                f"read and decoded ({args.threads} threads); requests per shard: "
                f"{min(requests)}..{max(requests)} (mean {np.mean(requests):.1f})"
            )
        print(f"  tars / files: {results['tars'] / results['files']:.2f}x images/s")


if __name__ == "__main__":
    main()
