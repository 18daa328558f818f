"""Preview pictures: separate panels, bordered swatches, a readable size, crisp masks."""

from __future__ import annotations

import numpy as np

from pipeline.reading.preview import render

CATEGORIES = [
    {"id": 1, "name": "background", "supercategory": "background", "color": [128, 0, 0]},
    {"id": 2, "name": "red circle", "color": [220, 40, 40]},
    {"id": 3, "name": "white cloud", "color": [250, 250, 250]},
]
FILL = (40, 160, 200)  # the test image's one colour, absent from canvas, palette and ink


def small_scene(h: int = 40, w: int = 60) -> tuple[np.ndarray, np.ndarray]:
    image_hwc = np.empty((h, w, 3), np.uint8)
    image_hwc[:] = FILL
    labels_hw = np.zeros((h, w), np.uint8)
    labels_hw[::2, ::2] = 1  # a checkerboard of single pixels: blurs at once if smoothed
    labels_hw[: h // 2, w // 2 :] = 2
    labels_hw[-1, -1] = 255
    return image_hwc, labels_hw


def panels(picture: np.ndarray) -> tuple[slice, list[tuple[int, int]]]:
    """The rows the image spans, and the ``[start, stop)`` column runs that are not canvas."""
    canvas = picture[0, 0]
    rows = np.flatnonzero(np.all(picture == FILL, axis=-1).any(axis=1))
    band = slice(rows[0], rows[-1] + 1)
    inked = ~np.all(picture[band] == canvas, axis=(0, 2))
    edges = np.flatnonzero(np.diff(np.concatenate([[0], inked.astype(int), [0]])))
    return band, list(zip(edges[::2], edges[1::2], strict=True))


def test_small_images_are_enlarged_to_a_readable_height():
    band, _ = panels(np.asarray(render(*small_scene(), CATEGORIES)))
    assert band.stop - band.start >= 256


def test_image_overlay_and_legend_are_apart_on_a_neutral_canvas():
    picture = np.asarray(render(*small_scene(), CATEGORIES))
    canvas = picture[0, 0]
    assert canvas.min() == canvas.max()  # grey
    _, runs = panels(picture)
    (image_start, image_stop), (overlay_start, overlay_stop), (legend_start, _) = runs[:3]
    assert image_stop - image_start == overlay_stop - overlay_start == 7 * 60  # 40 px high, 7x
    assert overlay_start - image_stop >= 8 and legend_start - overlay_stop >= 8
    assert image_start >= 8


def test_overlay_labels_stay_crisp_when_enlarged():
    picture = np.asarray(render(*small_scene(), CATEGORIES))
    band, runs = panels(picture)
    overlay = picture[band, runs[1][0] : runs[1][1]]
    colors = {tuple(c) for c in overlay.reshape(-1, 3)}
    # white outlines, the bare image (background, unlabelled) and two blends: no mixtures
    assert len(colors) <= 4


def test_legend_swatches_have_a_dark_border():
    picture = np.asarray(render(*small_scene(), CATEGORIES))
    for color in ([220, 40, 40], [250, 250, 250]):
        ys, xs = np.nonzero(np.all(picture == color, axis=-1))
        legend = xs > picture.shape[1] * 0.8
        ys, xs = ys[legend], xs[legend]
        ring = np.concatenate(
            [
                picture[ys.min() - 1, xs.min() - 1 : xs.max() + 2],
                picture[ys.max() + 1, xs.min() - 1 : xs.max() + 2],
                picture[ys.min() : ys.max() + 1, xs.min() - 1],
                picture[ys.min() : ys.max() + 1, xs.max() + 1],
            ]
        )
        assert ring.max() < 80, color


def test_large_images_are_shrunk_to_a_panel_of_about_512():
    band, runs = panels(np.asarray(render(*small_scene(1200, 1800), CATEGORIES)))
    assert band.stop - band.start == 341 and runs[0][1] - runs[0][0] == 512
