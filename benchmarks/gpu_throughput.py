"""Images/s on a GPU: the model alone, then the whole job (the project's goal: 1000 per H100).

    python benchmarks/gpu_throughput.py [--images 2000] [--batch-size 128]

ViT-B/16 with random weights (speed does not depend on them), GCLIP, the SCLIP protocol (short
side 336, crop 224, stride 112), bf16 autocast (``precision="auto"`` on CUDA), on 500x375 JPEG
files of the demo world. Model only: decoded images handed to ``Segmenter.segment``
``--images-per-call`` at a time. End to end: ``jobs.label``'s code path on Ray, from JPEG bytes
to every shard file on disk. Prints the device, both rates and their ratio.

``--device cpu --images 8`` runs it anywhere (a smoke test; the figures mean nothing there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from feed_speed import make_images

import gclip
from pipeline import RayBackend, load_run_config, run_labelling
from pipeline.formats.checkpoints import shipped_settings

PROTOCOL = {"short_side": 336, "crop": 224, "stride": 112}


def model_only(args: argparse.Namespace, folder: Path, vocabulary: gclip.Vocabulary) -> float:
    segmenter = gclip.load_segmenter(args.model, "none", "gclip", device=args.device)
    config = gclip.InferenceConfig(**PROTOCOL, batch_size=args.batch_size)
    paths = sorted(folder.glob("*.jpg"))[: args.images]
    images = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    segmenter.segment(images[: args.images_per_call], vocabulary, config)  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(images), args.images_per_call):
        segmenter.segment(images[i : i + args.images_per_call], vocabulary, config)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - start)


def end_to_end(args: argparse.Namespace, folder: Path) -> float:
    values = {
        "manifest": str(folder / "manifest.parquet"),
        "vocabulary": str(folder / "vocabulary.txt"),
        "output": str(folder / "out"),
        "model": args.model,
        "pretrained": "none",
        "inference": {**PROTOCOL, "batch_size": args.batch_size},
        "shard_size": args.shard_size,
        "images_per_call": args.images_per_call,
        "device": args.device,
        "merge_limit": 0,
    }
    start = time.perf_counter()
    summary = run_labelling(load_run_config(values, {}, shipped_settings), RayBackend())
    assert summary.ok, summary
    return summary.images_labelled / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128, help="windows per forward")
    parser.add_argument("--images-per-call", type=int, default=32)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_images(folder, args.images)
        vocabulary = gclip.load_vocabulary(folder / "vocabulary.txt")
        alone = model_only(args, folder, vocabulary)
        job = end_to_end(args, folder)
    print(
        f"{name}, {args.model} random weights, GCLIP, SCLIP protocol (336/224/112), "
        f"{'bf16' if args.device == 'cuda' else 'fp32'}, {args.images} JPEGs 500x375"
    )
    print(f"model only:  {alone:8.1f} images/s")
    print(f"end to end:  {job:8.1f} images/s (Ray, decode, encode, writes; incl. start-up)")
    print(f"ratio {job / alone:.2f}")


if __name__ == "__main__":
    main()
