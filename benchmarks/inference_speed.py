"""Throughput of batched sliding-window inference against the research repos' style.

The research style (SCLIP/ClearCLIP/NACLIP ``slide_inference``): one image at a time, one window
per forward, a Python loop over windows. Ours: windows of many images in one forward. Both run
the same model, images, vocabulary and settings; the script checks their outputs agree, then
prints images/s, peak memory and the ratio, and how time grows with image size.

Then vocabularies of 20, 200 and 1,203 names (LVIS-sized), each in a fresh process (peak memory
is a process's high-water mark): images/s and peak memory with the names in chunks of 256 (the
default), and for the largest also all names at once, as before chunking.

Then the cost of ``--embeddings``: labelling at the labelling job's default scale with and
without each image's CLIP image embedding (one more forward at the model's resolution per
image, batched), best of alternating runs, and the ratio (target: at most 1.10 on a CPU).

    python benchmarks/inference_speed.py [--model ViT-B-16] [--images 8] [--batch-size 16]
    python benchmarks/inference_speed.py --model demo --embeddings-only

Random weights are used (speed does not depend on them). CUDA is used when present.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import subprocess
import sys
import time

import numpy as np
import torch

import gclip
from gclip.inference import window_starts


def research_style(segmenter, images, vocabulary, config):
    """One window per forward, image by image: what the research repos' slide_inference does."""
    one_window = dataclasses.replace(config, batch_size=1)
    return [segmenter.segment([image], vocabulary, one_window)[0] for image in images]


def ours(segmenter, images, vocabulary, config):
    return segmenter.segment(images, vocabulary, config)


def timed(fn, *args, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process high-water mark
    return out, seconds, peak


def setup(
    args: argparse.Namespace,
) -> tuple[torch.device, gclip.Segmenter, gclip.InferenceConfig, list]:
    """The device, a random-weight segmenter (speed does not depend on weights), the settings
    and the images every case uses."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    segmenter = gclip.load_segmenter(
        args.model, "none", args.method, device=device, templates=["a photo of a {}."]
    )
    config = gclip.InferenceConfig(
        short_side=args.short_side,
        crop=args.crop,
        stride=args.stride,
        batch_size=args.batch_size,
        precision=args.precision,
    )
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (*args.size, 3), dtype=np.uint8) for _ in range(args.images)]
    return device, segmenter, config, images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--method", default="gclip")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, nargs=2, default=(448, 672), metavar=("H", "W"))
    parser.add_argument("--short-side", type=int, default=224)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--stride", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--vocabulary-sizes", type=int, nargs="*", default=[20, 200, 1203])
    parser.add_argument("--one-vocabulary", type=int, nargs=2, help=argparse.SUPPRESS)
    parser.add_argument(
        "--embeddings-only", action="store_true", help="only the --embeddings cost case"
    )
    args = parser.parse_args()
    if args.one_vocabulary:
        return vocabulary_case(args, *args.one_vocabulary)
    if args.embeddings_only:
        return embeddings_case(args)

    device, segmenter, config, images = setup(args)
    vocabulary = gclip.parse_text("road, street\ncar\nperson, pedestrian\nbuilding\nsky\ntree")
    h, w = gclip.inference.resized_size(*args.size, args.short_side)
    windows = len(window_starts(h, args.crop, args.stride)) * len(
        window_starts(w, args.crop, args.stride)
    )
    print(f"device={device} model={args.model} method={args.method} precision={args.precision}")
    print(f"{args.images} images {args.size[0]}x{args.size[1]} -> {h}x{w}, {windows} windows each")

    ours(segmenter, images[:1], vocabulary, config)  # warm-up: text cache, kernels, allocator
    # Alternate the two styles and keep each one's best time: this machine's noise is one-sided.
    base_s = our_s = float("inf")
    for _ in range(args.repeats):
        base_out, seconds, base_mem = timed(
            research_style, segmenter, images, vocabulary, config, device=device
        )
        base_s = min(base_s, seconds)
        our_out, seconds, our_mem = timed(
            ours, segmenter, images, vocabulary, config, device=device
        )
        our_s = min(our_s, seconds)
    agree = np.mean(
        [np.mean(a.labels_hw == b.labels_hw) for a, b in zip(base_out, our_out, strict=True)]
    )
    max_conf_diff = max(
        float(np.abs(a.confidence_hw - b.confidence_hw).max())
        for a, b in zip(base_out, our_out, strict=True)
    )
    print(f"best of {args.repeats} alternating runs each")
    print(f"research style: {args.images / base_s:7.2f} images/s  peak {base_mem:8.0f} MiB")
    print(f"ours (batched): {args.images / our_s:7.2f} images/s  peak {our_mem:8.0f} MiB")
    print(
        f"ratio ours/research: {base_s / our_s:.2f}x  label agreement {agree:.6f}  max |dconf| {max_conf_diff:.2e}"
    )

    print("scaling with image size (ours):")
    for scale in (1, 2, 3):
        size = (args.short_side * scale, args.short_side * scale * 3 // 2)
        rng = np.random.default_rng(scale)
        sized = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(2)]
        cfg = dataclasses.replace(config, short_side=args.short_side * scale)
        hh, ww = gclip.inference.resized_size(*size, cfg.short_side)
        n = len(window_starts(hh, args.crop, args.stride)) * len(
            window_starts(ww, args.crop, args.stride)
        )
        _, seconds, _ = timed(ours, segmenter, sized, vocabulary, cfg, device=device)
        print(
            f"  {hh}x{ww}: {n:3d} windows/image  {seconds / 2 * 1000:8.1f} ms/image  {seconds / 2 / n * 1000:6.1f} ms/window"
        )

    if args.vocabulary_sizes:
        print("large vocabularies (a fresh process each):")
        cases = [(n, 256) for n in args.vocabulary_sizes]
        cases.append((max(args.vocabulary_sizes), max(args.vocabulary_sizes)))  # all at once
        for names, chunk in cases:
            command = [sys.executable, __file__, "--one-vocabulary", str(names), str(chunk)]
            command += ["--model", args.model, "--images", str(args.images)]
            command += ["--short-side", str(args.short_side), "--crop", str(args.crop)]
            command += ["--stride", str(args.stride), "--precision", args.precision]
            result = subprocess.run(command, capture_output=True, text=True)
            print(result.stdout.strip() or result.stderr[-2000:])
    embeddings_case(args)


def embeddings_case(args: argparse.Namespace) -> None:
    """Labelling with and without embeddings, at the labelling job's default scale (the
    shipped one for a checkpoint that ships one, as ``jobs.label`` runs it).

    A worker with ``--embeddings`` labels a call's images, then embeds them in one batch: the
    two are timed apart, each the best of alternating repeats (this machine's noise is
    one-sided), and the ratio is (labels + embeddings) / labels.
    """
    device, segmenter, _, images = setup(args)
    config = dataclasses.replace(segmenter.inference, precision=args.precision)
    vocabulary = gclip.parse_text("road, street\ncar\nperson, pedestrian\nbuilding\nsky\ntree")
    ours(segmenter, images[:1], vocabulary, config)  # warm-up
    segmenter.image_embeddings(images[:1])
    label_s = embed_s = float("inf")
    for _ in range(args.repeats):
        _, seconds, _ = timed(ours, segmenter, images, vocabulary, config, device=device)
        label_s = min(label_s, seconds)
        _, seconds, _ = timed(segmenter.image_embeddings, images, device=device)
        embed_s = min(embed_s, seconds)
    h, w = gclip.inference.resized_size(*args.size, config.short_side, config.max_long_side)
    print(
        f"--embeddings cost ({args.model}, {device}, {args.images} images {args.size[0]}x"
        f"{args.size[1]} labelled at {h}x{w}, crop {config.crop} stride {config.stride}, "
        f"best of {args.repeats}):"
    )
    print(f"  labels:            {label_s / args.images * 1000:8.1f} ms/image")
    print(f"  embeddings:        {embed_s / args.images * 1000:8.1f} ms/image")
    print(f"  without embeddings: {args.images / label_s:7.2f} images/s")
    print(f"  with embeddings:    {args.images / (label_s + embed_s):7.2f} images/s")
    ratio = (label_s + embed_s) / label_s
    print(f"  ratio with/without: {ratio:.3f} (target <= 1.10 on CPU)")


def vocabulary_case(args: argparse.Namespace, names: int, chunk: int) -> None:
    """One vocabulary size in this process: images/s and the process's peak memory."""
    device, segmenter, config, images = setup(args)
    config = dataclasses.replace(config, name_chunk=chunk)
    vocabulary = gclip.parse_text("\n".join(f"class number {i}" for i in range(names)))
    segmenter.text.embed(vocabulary)  # text embeddings once, outside the timing
    ours(segmenter, images[:1], vocabulary, config)  # warm-up
    _, seconds, peak = timed(ours, segmenter, images, vocabulary, config, device=device)
    print(
        f"  {names:5d} names, {chunk:5d} at once: {args.images / seconds:6.2f} images/s, "
        f"peak {peak:7.0f} MiB"
    )


if __name__ == "__main__":
    main()
