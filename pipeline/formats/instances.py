"""Instances from a semantic mask: its connected components, for detector pseudo-labels.

A class mask (every pixel of one class in one image) splits into 8-connected components, as
detection and instance-segmentation datasets count objects; components under a minimum area
(speckle a sliding-window model leaves at region borders) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

MIN_AREA = 64  # pixels: an 8 x 8 patch; smaller components are noise, not objects
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def instance_masks(mask_hw: np.ndarray, min_area: int = MIN_AREA) -> Iterator[np.ndarray]:
    """The 8-connected components of a mask with at least ``min_area`` pixels.

    Args:
        mask_hw: ``H x W`` bool, one class's pixels.
        min_area: smallest component kept, in pixels.

    Returns:
        ``H x W`` bool masks, disjoint, in raster order of their first pixel (deterministic);
        their union is ``mask_hw`` less the dropped components.
    """
    components_hw, count = ndimage.label(mask_hw, structure=_EIGHT_CONNECTED)  # H x W int32
    areas = np.bincount(components_hw.ravel(), minlength=count + 1)  # count + 1, [0]: outside
    for number, box_yx in enumerate(ndimage.find_objects(components_hw), start=1):
        if box_yx is None or areas[number] < min_area:
            continue
        instance_hw = np.zeros(mask_hw.shape, dtype=bool)
        instance_hw[box_yx] = components_hw[box_yx] == number  # only the component's box is read
        yield instance_hw
