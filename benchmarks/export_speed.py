"""Speed and peak memory of ``jobs.export`` per format, on a stand-in run of N images.

A run of ``--images`` noisy ``--side`` x ``--side`` PNGs is labelled by the tests' stand-in
segmenter (no model), without PNG label maps (so label maps are rasterised from the COCO
masks: the slower path) unless ``--png-labels``; then each format is exported in a fresh
process, which prints images/s and its peak RSS (``ru_maxrss``). Memory should stay flat as
``--images`` grows (one shard's rows and a few images at a time).

    python benchmarks/export_speed.py [--images 1000] [--side 256] [--shard-size 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MAKE = """
import sys
sys.path.insert(0, {tests!r})
import numpy as np, pyarrow as pa, pyarrow.parquet as pq
from PIL import Image
from fakes import BrightnessSegmenter
from pipeline import LocalBackend, RunConfig, run_labelling
root, n, side = {root!r}, {images}, {side}
rng = np.random.default_rng(0)
uris = []
for i in range(n):
    path = f"{{root}}/img/{{i:06d}}.png"
    if i == 0:
        import os; os.makedirs(f"{{root}}/img", exist_ok=True)
    array = (rng.random((side, side, 3)) * 255).astype(np.uint8)
    array[: side // 2] //= 3
    Image.fromarray(array).save(path)
    uris.append(path)
pq.write_table(pa.table({{"image_id": [f"im/{{i}}.png" for i in range(n)], "uri": uris}}), f"{{root}}/m.parquet")
open(f"{{root}}/v.txt", "w").write("dark\\nbright\\n")
config = RunConfig.from_settings(manifest=f"{{root}}/m.parquet", vocabulary=f"{{root}}/v.txt",
    output=f"{{root}}/out", shard_size={shard_size}, pretrained="none", png_labels={png})
assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
"""

EXPORT = """
import resource, time
from pipeline.exports import ExportOptions, export_run
start = time.perf_counter()
summary = export_run({out!r}, {fmt!r}, {dest!r}, options=ExportOptions(shard_mb=50, image_url_prefix="http://x"), progress=False)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{fmt:12s} {{summary.samples}} images in {{seconds:.1f}} s: {{summary.samples / seconds:.0f}} images/s, {{summary.parts}} parts, peak RSS {{peak:.0f}} MB")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=200)
    parser.add_argument("--png-labels", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        make = MAKE.format(
            tests=str(ROOT / "tests"),
            root=root,
            images=args.images,
            side=args.side,
            shard_size=args.shard_size,
            png=args.png_labels,
        )
        subprocess.run([sys.executable, "-c", make], check=True, cwd=ROOT)
        print(f"{args.images} images of {args.side}x{args.side}, png_labels={args.png_labels}")
        for fmt in ("webdataset", "mmseg", "hf", "labelstudio"):
            code = EXPORT.format(out=f"{root}/out", fmt=fmt, dest=f"{root}/{fmt}")
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
