"""Write the bundled demo dataset: scenes, ground truth, a Parquet manifest and a vocabulary.

    python scripts/make_demo_data.py [--out demo] [--count 16]

Deterministic: the same command writes the same files. Manifest URIs are relative to the
repository root (where the README's commands run, and the working dir of ``ray job submit``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gclip.demo_world import generate_scene, vocabulary_text

SEED = 4242  # neither the training stream (0) nor the held-out evaluation seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--count", type=int, default=16)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    (args.out / "ground_truth").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(args.count):
        size = (int(rng.integers(96, 161)), int(rng.integers(96, 193)))
        scene = generate_scene(rng, size, max_shapes=5)
        name = f"scene_{i:03d}"
        Image.fromarray(scene.image_hwc_uint8).save(args.out / "images" / f"{name}.png")
        Image.fromarray(scene.labels_hw).save(args.out / "ground_truth" / f"{name}.png")
        rows.append(
            {
                "image_id": name,
                # relative to the manifest's folder, where a manifest's relative uris are read
                "uri": f"images/{name}.png",
                "width": size[1],
                "height": size[0],
            }
        )
    pq.write_table(pa.Table.from_pylist(rows), args.out / "manifest.parquet")
    (args.out / "vocabulary.txt").write_text(vocabulary_text())
    print(f"wrote {args.count} scenes, ground truth, manifest and vocabulary under {args.out}")


if __name__ == "__main__":
    main()
