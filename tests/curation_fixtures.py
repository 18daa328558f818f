"""Runs with embeddings for the curation tests: labelled in process by the fake segmenter,
their ``embeddings/`` written here as ``jobs.label --embeddings`` writes them (one Parquet
file per finished shard: ``image_id``, ``embedding`` fixed_size_list<float>[D])."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fakes import BrightnessSegmenter
from PIL import Image

from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.formats.layout import embedding_table_path
from pipeline.formats.progress import read_progress
from pipeline.formats.storage import Storage

SHARD_SIZE = 4


def label_images(root, images, ids=None, relative=False, output="out", shard_size=SHARD_SIZE):
    """Save ``images`` (``H x W x 3`` uint8) as PNGs with a manifest and label them with the
    fake segmenter (bright/dark); return the output folder. ``relative``: manifest uris are
    relative to its folder."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    ids = ids or [f"im{i:03d}" for i in range(len(images))]
    uris = []
    for image_id, image in zip(ids, images, strict=True):
        Image.fromarray(image).save(root / "img" / f"{image_id}.png")
        uris.append(f"img/{image_id}.png" if relative else str(root / "img" / f"{image_id}.png"))
    pq.write_table(pa.table({"image_id": ids, "uri": uris, "note": ids}), root / "m.parquet")
    (root / "vocab.txt").write_text("dark\nbright\n")
    config = RunConfig.from_settings(
        manifest=str(root / "m.parquet"),
        vocabulary=str(root / "vocab.txt"),
        output=str(root / output),
        shard_size=shard_size,
        pretrained="none",
    )
    assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
    return root / output


def write_embeddings(out, vectors_nd, ids, float16_shards=(), shard_size=SHARD_SIZE):
    """Write ``vectors_nd`` (rows in manifest order, ``ids`` theirs) as the finished shards'
    embedding files; ``float16_shards`` are stored as float16."""
    storage = Storage(str(out))
    for shard in read_progress(storage).done_shards:
        rows = slice(shard * shard_size, (shard + 1) * shard_size)
        block = np.asarray(vectors_nd[rows])
        dtype = pa.float16() if shard in float16_shards else pa.float32()
        values = pa.array(
            block.astype(np.float16 if shard in float16_shards else np.float32).ravel(), dtype
        )
        column = pa.FixedSizeListArray.from_arrays(values, block.shape[1])
        table = pa.table({"image_id": pa.array(ids[rows]), "embedding": column})
        with storage.open_atomic(embedding_table_path(shard)) as stream:
            pq.write_table(table, stream)


def unit_rows(rng, n, d):
    """``n x d`` float32 random unit vectors."""
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brightness_images(rng, n, size_hw=(12, 16)):
    """Images with a bright left part of random width over a dark background of random
    level, and noise (so pixel shares and confidences vary from image to image)."""
    images = []
    for _ in range(n):
        level = int(rng.integers(0, 90))
        image = rng.integers(level, level + 30, size=(*size_hw, 3), dtype=np.uint8)
        image[:, : int(rng.integers(0, size_hw[1] + 1))] += 130
        images.append(image)
    return images
