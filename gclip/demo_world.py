"""The demo world: coloured geometric shapes on textured backgrounds, with ground truth.

Classes (label map values): 0 ``background``, then every ``"<colour> <shape>"`` for colours
red, green, blue, yellow and shapes circle, square, triangle (12 classes, indices 1..12).
Pure numpy; deterministic for a given ``numpy.random.Generator`` state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SHAPES = ("circle", "square", "triangle")
COLOURS = {
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 215),
    "yellow": (230, 205, 40),
}
CLASS_NAMES = ("background", *(f"{c} {s}" for c in COLOURS for s in SHAPES))


@dataclass(frozen=True, slots=True)
class Scene:
    """One generated scene: ``image_hwc_uint8`` and its ``labels_hw`` (indices into CLASS_NAMES)."""

    image_hwc_uint8: np.ndarray
    labels_hw: np.ndarray


def vocabulary_text() -> str:
    """The demo vocabulary in the plain-text form (one class per line)."""
    return "\n".join(CLASS_NAMES) + "\n"


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Dull, textured background: low-frequency noise plus optional stripes, greyish tones."""
    base = rng.uniform(70, 170, size=3)
    coarse = rng.normal(0, 1, size=(h // 8 + 2, w // 8 + 2, 3))
    noise = np.kron(coarse, np.ones((8, 8, 1)))[:h, :w]  # blocky low-frequency noise
    texture = base + 18 * noise + rng.normal(0, 6, size=(h, w, 3))
    if rng.random() < 0.5:
        ys, xs = np.mgrid[0:h, 0:w]
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(6, 16)
        stripes = np.sin((xs * np.cos(angle) + ys * np.sin(angle)) * 2 * np.pi / period)
        texture = texture + 15 * stripes[..., None]
    grey = texture.mean(axis=2, keepdims=True)
    return 0.6 * grey + 0.4 * texture  # desaturate so backgrounds never look like a shape colour


def _mask(shape: str, h: int, w: int, cy: float, cx: float, r: float, angle: float) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    dy, dx = ys + 0.5 - cy, xs + 0.5 - cx
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    # rotate into the shape frame
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if shape == "square":
        side = r * 0.9
        return (np.abs(u) <= side) & (np.abs(v) <= side)
    # equilateral triangle with circumradius r, pointing up in its frame
    inside = v <= r / 2
    for k in (1, 2):
        a = np.pi / 2 + 2 * np.pi * k / 3  # the other two edge normals, 120 degrees apart
        inside &= (np.cos(a) * u + np.sin(a) * v) <= r / 2
    return inside


def generate_scene(
    rng: np.random.Generator,
    size_hw: tuple[int, int] = (64, 64),
    max_shapes: int = 3,
    radius_range: tuple[float, float] = (7.0, 16.0),
) -> Scene:
    """A scene of 1..``max_shapes`` shapes (later ones drawn on top) on a textured background."""
    h, w = size_hw
    image = _background(rng, h, w)
    labels = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        colour_index = int(rng.integers(len(COLOURS)))
        shape_index = int(rng.integers(len(SHAPES)))
        r = rng.uniform(*radius_range)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        mask = _mask(SHAPES[shape_index], h, w, cy, cx, r, rng.uniform(0, 2 * np.pi))
        if mask.sum() < 4:
            continue
        colour = np.array(list(COLOURS.values())[colour_index]) + rng.normal(0, 12, size=3)
        shade = colour + rng.normal(0, 5, size=(h, w, 3))
        image[mask] = shade[mask]
        labels[mask] = 1 + colour_index * len(SHAPES) + shape_index
    return Scene(np.clip(image, 0, 255).astype(np.uint8), labels)
