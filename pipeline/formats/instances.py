"""Instances from a semantic mask: its connected components, for detector pseudo-labels.

A class mask (every pixel of one class in one image) splits into 8-connected components, as
detection and instance-segmentation datasets count objects; components under a minimum area
(speckle a sliding-window model leaves at region borders) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

MIN_AREA = 64  # pixels: an 8 x 8 patch; smaller components are noise, not objects
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True, slots=True)
class Instance:
    """One connected component, held within its bounding box (so that per-instance work costs
    the box, not the image).

    Attributes:
        box_yx: the component's rows and columns in the image.
        mask_box: ``h x w`` bool, the component within ``box_yx``.
    """

    box_yx: tuple[slice, slice]
    mask_box: np.ndarray

    def mask(self, size_hw: tuple[int, int], order: str = "C") -> np.ndarray:
        """``H x W`` uint8 (1 on the component) in the image frame; ``order="F"`` gives the
        Fortran layout pycocotools encodes without a copy."""
        full_hw = np.zeros(size_hw, dtype=np.uint8, order=order)  # type: ignore[call-overload]
        full_hw[self.box_yx] = self.mask_box
        return full_hw


def instances(mask_hw: np.ndarray, min_area: int = MIN_AREA) -> Iterator[Instance]:
    """The 8-connected components of a mask with at least ``min_area`` pixels.

    Args:
        mask_hw: ``H x W`` bool, one class's pixels.
        min_area: smallest component kept, in pixels.

    Returns:
        Disjoint components in raster order of their first pixel (deterministic); their union
        is ``mask_hw`` less the dropped ones.
    """
    # scipy loads here, not with the module: host workers of runs without instances (most)
    # are spared its import (0.2 s a process).
    from scipy import ndimage

    components_hw, count = ndimage.label(mask_hw, structure=_EIGHT_CONNECTED)  # H x W int32
    areas = np.bincount(components_hw.ravel(), minlength=count + 1)  # count + 1, [0]: outside
    for number, box_yx in enumerate(ndimage.find_objects(components_hw), start=1):
        if box_yx is not None and areas[number] >= min_area:
            yield Instance(box_yx, components_hw[box_yx] == number)
