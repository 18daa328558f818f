"""PAMR: pixel-adaptive mask refinement (Araslanov & Roth, CVPR 2020).

Each iteration replaces a pixel's scores with an affinity-weighted mean of its 8 neighbours at
each dilation (not itself); affinities come from colour differences normalised by the local
colour spread, so scores spread within regions and stop at edges.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

# The 8 neighbour offsets (dy, dx) of a 3x3 neighbourhood, scaled by each dilation.
_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbours(x: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """Values at the 8 neighbours of each pixel for each dilation (replicate padding).

    Args:
        x: ``C x h x w``.

    Returns:
        ``C x K x h x w`` with ``K = 8 * len(dilations)``.
    """
    _, h, w = x.shape
    shifted = []
    for d in dilations:
        padded = F.pad(x[None], (d, d, d, d), mode="replicate")[0]  # C x (h+2d) x (w+2d)
        for dy, dx in _OFFSETS:
            shifted.append(padded[:, d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
    return torch.stack(shifted, dim=1)  # C x K x h x w


def pamr(
    image: torch.Tensor,
    scores: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (8, 16),
) -> torch.Tensor:
    """Refine ``scores`` with PAMR guided by ``image``.

    Args:
        image: ``3 x h x w`` float image (any normalisation).
        scores: ``N x h x w`` per-name scores on the same grid.
        iterations: refinement steps.
        dilations: neighbourhood dilations in pixels.

    Returns:
        ``N x h x w`` refined scores.
    """
    image = image.float()
    near = neighbours(image, dilations)  # 3 x K x h x w
    # Affinity: colour distance in units of the local spread, averaged over channels.
    spread = torch.cat([image[:, None], near], dim=1).std(dim=1, keepdim=True)  # 3 x 1 x h x w
    affinity = -(near - image[:, None]).abs() / (1e-8 + 0.1 * spread)  # 3 x K x h x w
    weights = torch.softmax(affinity.mean(dim=0), dim=0)  # K x h x w, sums to 1 per pixel
    refined = scores.float()
    for _ in range(iterations):
        refined = (neighbours(refined, dilations) * weights[None]).sum(dim=1)  # N x h x w
    return refined.to(scores.dtype)
