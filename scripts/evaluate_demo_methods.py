"""mIoU of every method on held-out demo-world scenes with the bundled demo model.

    python scripts/evaluate_demo_methods.py [--scenes 60] [--method gclip ...]

Scenes come from a seed the training never uses; inference runs through ``gclip.Segmenter``
exactly as the labelling job does. Prints a Markdown table (the README's per-method table).
"""

from __future__ import annotations

import argparse

import numpy as np

import gclip
from gclip.demo_world import CLASS_NAMES, generate_scene, vocabulary_text
from gclip.metrics import confusion_matrix, scores

HELD_OUT_SEED = 20261125  # training draws from the streams of seeds 0 and 1 only


def held_out_scenes(count: int, size: int = 128):
    rng = np.random.default_rng(HELD_OUT_SEED)
    return [generate_scene(rng, (size, size), max_shapes=6) for _ in range(count)]


def evaluate(method: str, scenes, pamr: bool) -> gclip.metrics.SegmentationScores:
    # The demo checkpoint ships its scale (short side 128, windows 64/32, PAMR dilations 2/4).
    segmenter = gclip.load_segmenter(
        gclip.DEMO_MODEL, method=method, inference={"batch_size": 32, "pamr": pamr}
    )
    vocabulary = gclip.parse_text(vocabulary_text())
    confusion = np.zeros((len(CLASS_NAMES), len(CLASS_NAMES) + 1), np.int64)
    for start in range(0, len(scenes), 8):
        chunk = scenes[start : start + 8]
        results = segmenter.segment([s.image_hwc_uint8 for s in chunk], vocabulary)
        for scene, result in zip(chunk, results, strict=True):
            confusion += confusion_matrix(scene.labels_hw, result.labels_hw, len(CLASS_NAMES))
    return scores(confusion)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--method", nargs="*", default=list(gclip.METHODS))
    parser.add_argument("--pamr", action="store_true", help="refine with PAMR (dilations 2, 4)")
    args = parser.parse_args()
    scenes = held_out_scenes(args.scenes)
    shipped = gclip.load_segmenter(gclip.DEMO_MODEL).inference
    print(
        f"{args.scenes} held-out scenes 128x128, the checkpoint's settings (short side "
        f"{shipped.short_side}, windows {shipped.crop}/{shipped.stride}), PAMR {args.pamr}\n"
    )
    print("| method | mIoU | pixel acc |")
    print("|---|---|---|")
    for method in args.method:
        s = evaluate(method, scenes, args.pamr)
        print(f"| {method} | {s.miou:.3f} | {s.pixel_accuracy:.3f} |", flush=True)


if __name__ == "__main__":
    main()
