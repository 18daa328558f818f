"""Sliding-window inference batched across images, stitching, and probabilities.

Frames: an *original* image is ``H0 x W0``; it is resized so its short side is
``InferenceConfig.short_side`` into the *resized* frame ``h x w``, where windows live
(``y0, x0`` top-left, rows first). Logits are stitched in the resized frame and upsampled to
the original frame at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gclip.config import InferenceConfig
from gclip.pamr import pamr

# Upsampling to the original frame proceeds in row bands of at most this many elements, so a
# 4000 x 3000 image with 300 names needs a few hundred MB rather than several GB.
_BAND_ELEMENTS = 1 << 25


@dataclass(frozen=True, slots=True)
class Window:
    """One crop of one image, in that image's resized frame."""

    image: int
    y0: int
    x0: int
    h: int
    w: int


def resized_size(h0: int, w0: int, short_side: int | None) -> tuple[int, int]:
    """``(h, w)`` with the short side scaled to ``short_side`` (aspect kept, at least 1 px)."""
    if short_side is None:
        return h0, w0
    scale = short_side / min(h0, w0)
    return max(1, round(h0 * scale)), max(1, round(w0 * scale))


def window_starts(length: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """``(start, size)`` of windows along one axis; the last one is shifted back inside."""
    count = max(length - crop + stride - 1, 0) // stride + 1
    spans = []
    for i in range(count):
        end = min(i * stride + crop, length)
        start = max(end - crop, 0)
        spans.append((start, end - start))
    return spans


def plan_windows(sizes_hw: Sequence[tuple[int, int]], crop: int, stride: int) -> list[Window]:
    """All windows of all images, image by image, rows first."""
    windows = []
    for image, (h, w) in enumerate(sizes_hw):
        for y0, wh in window_starts(h, crop, stride):
            for x0, ww in window_starts(w, crop, stride):
                windows.append(Window(image, y0, x0, wh, ww))
    return windows


def batch_windows(windows: Sequence[Window], patch: int, batch_size: int) -> list[list[Window]]:
    """Group windows of equal padded size into batches of at most ``batch_size``."""
    groups: dict[tuple[int, int], list[Window]] = defaultdict(list)
    for win in windows:
        groups[(_pad_to(win.h, patch), _pad_to(win.w, patch))].append(win)
    return [
        group[i : i + batch_size]
        for group in groups.values()
        for i in range(0, len(group), batch_size)
    ]


def stitch_logits(
    images: Sequence[torch.Tensor],
    text: torch.Tensor,
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    patch: int,
    config: InferenceConfig,
) -> list[torch.Tensor]:
    """Window logits of many images, computed in shared batches and averaged on canvases.

    Args:
        images: per image a ``3 x h x w`` normalised tensor in the resized frame.
        text: ``N x E`` normalised name embeddings.
        features_fn: ``B x 3 x hp x wp -> B x hp/p x wp/p x E`` normalised dense features.
        patch: the backbone's patch size; windows are zero-padded to multiples of it.
        config: crop, stride and batch size.

    Returns:
        Per image ``N x h x w`` cosine-similarity logits in the resized frame.
    """
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    canvases = [images[0].new_zeros((text.shape[0], h, w), dtype=torch.float32) for h, w in sizes]
    counts = [images[0].new_zeros((1, h, w), dtype=torch.float32) for h, w in sizes]
    windows = plan_windows(sizes, config.crop, config.stride)
    for batch in batch_windows(windows, patch, config.batch_size):
        hp, wp = _pad_to(batch[0].h, patch), _pad_to(batch[0].w, patch)
        crops = torch.stack(
            [_padded_crop(images[win.image], win, hp, wp) for win in batch]
        )  # B x 3 x hp x wp
        features = features_fn(crops).float()  # B x gh x gw x E
        logits = torch.einsum("bhwe,ne->bnhw", features, text.to(features))  # B x N x gh x gw
        logits = F.interpolate(
            logits, size=(hp, wp), mode="bilinear", align_corners=False
        )  # B x N x hp x wp
        for win, window_logits in zip(batch, logits, strict=True):
            canvases[win.image][:, win.y0 : win.y0 + win.h, win.x0 : win.x0 + win.w] += (
                window_logits[:, : win.h, : win.w]
            )
            counts[win.image][:, win.y0 : win.y0 + win.h, win.x0 : win.x0 + win.w] += 1
    return [canvas / count for canvas, count in zip(canvases, counts, strict=True)]


def labels_from_logits(
    logits: torch.Tensor,
    name_to_class: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    thresholds: Sequence[float | None],
    size_hw: tuple[int, int],
    unlabelled: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsample logits to the original frame and turn them into labels and confidence.

    Args:
        logits: ``N x h x w`` per-name cosine similarities in the resized frame.
        name_to_class: ``N`` int64, the class index of each name.
        num_classes: K.
        logit_scale: softmax temperature over all names.
        thresholds: per class, the minimum probability to keep the label (``None``: keep).
        size_hw: the original frame ``(H0, W0)``.
        unlabelled: label value for pixels below their class's threshold.

    Returns:
        ``H0 x W0`` uint8 labels (class index or ``unlabelled``) and ``H0 x W0`` float32
        confidence (probability of the chosen class: max over its names' softmax).
    """
    h0, w0 = size_hw
    band = max(1, _BAND_ELEMENTS // max(1, logits.shape[0] * w0))
    labels = torch.empty((h0, w0), dtype=torch.uint8, device=logits.device)
    confidence = torch.empty((h0, w0), dtype=torch.float32, device=logits.device)
    min_prob = torch.tensor(
        [-1.0 if t is None else t for t in thresholds], device=logits.device
    )  # K
    index = name_to_class.to(logits.device)[:, None, None]  # N x 1 x 1
    for top in range(0, h0, band):
        rows = upsample_rows(logits, (h0, w0), top, min(top + band, h0))  # N x b x W0
        probs = torch.softmax(logit_scale * rows, dim=0)  # N x b x W0
        class_probs = probs.new_zeros((num_classes, *probs.shape[1:]))  # K x b x W0
        class_probs.scatter_reduce_(0, index.expand_as(probs), probs, reduce="amax")
        conf, label = class_probs.max(dim=0)  # b x W0 each
        keep = conf >= min_prob[label]
        labels[top : top + rows.shape[1]] = torch.where(keep, label, unlabelled).to(torch.uint8)
        confidence[top : top + rows.shape[1]] = conf
    return labels, confidence


def upsample_rows(x: torch.Tensor, size_hw: tuple[int, int], top: int, bottom: int) -> torch.Tensor:
    """Rows ``top:bottom`` of ``F.interpolate(x, size_hw, 'bilinear', align_corners=False)``.

    Bilinear interpolation is separable, so rows are blended here and columns by 1-D linear
    interpolation, without materialising the full ``N x H0 x W0`` tensor.

    Args:
        x: ``N x h x w``.

    Returns:
        ``N x (bottom - top) x W0``.
    """
    _, h, _ = x.shape
    out_h, out_w = size_hw
    ys = torch.arange(top, bottom, device=x.device, dtype=torch.float64)
    src = ((ys + 0.5) * (h / out_h) - 0.5).clamp(min=0)  # b, source row in the resized frame
    y_lo = src.floor().long().clamp(max=h - 1)  # b
    y_hi = (y_lo + 1).clamp(max=h - 1)  # b
    weight = (src - y_lo).to(x.dtype)[None, :, None]  # 1 x b x 1
    rows = x[:, y_lo] * (1 - weight) + x[:, y_hi] * weight  # N x b x w
    return F.interpolate(rows, size=out_w, mode="linear", align_corners=False)  # N x b x W0


def refine(logits: torch.Tensor, image: torch.Tensor, config: InferenceConfig) -> torch.Tensor:
    """PAMR on ``N x h x w`` logits guided by the ``3 x h x w`` image, if enabled."""
    if not config.pamr:
        return logits
    return pamr(image, logits, config.pamr_iterations, config.pamr_dilations)


def _pad_to(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def _padded_crop(image: torch.Tensor, win: Window, hp: int, wp: int) -> torch.Tensor:
    crop = image[:, win.y0 : win.y0 + win.h, win.x0 : win.x0 + win.w]  # 3 x h x w
    # Zero after normalisation is the dataset mean colour; its logits are cropped away.
    return F.pad(crop, (0, wp - win.w, 0, hp - win.h))  # 3 x hp x wp
