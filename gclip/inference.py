"""Sliding-window inference batched across images, stitching, and probabilities.

Frames: an *original* image is ``H0 x W0``; it is resized so its short side is
``InferenceConfig.short_side`` (its long side at most ``max_long_side``) into the *resized*
frame ``h x w``, where windows live (``y0, x0`` top-left, rows first). Logits are stitched in
the resized frame and upsampled to the original frame at the end.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gclip.config import InferenceConfig
from gclip.pamr import pamr
from gclip.vocabulary import UNLABELLED

# Upsampling to the original frame proceeds in row bands of at most this many elements, so a
# 4000 x 3000 image with 300 names needs a few hundred MB rather than several GB. The bands
# are those of earlier versions on purpose: the log-sum-exp over names is one sum over a band
# (as ``torch.logsumexp`` makes it), and torch sums a pixel in an order that depends on where
# the pixel lies in the summed tensor, so other bands could change the last bit of a confidence.
_BAND_ELEMENTS = 1 << 25
# Within a band, the per-pixel work (maximum over names, labels, shifts) proceeds in row
# blocks of at most this many pixels; none of it depends on the block (a test checks to the
# bit), and its ~30 bytes a pixel of temporaries stay a few MB instead of hundreds.
_BLOCK_PIXELS = 1 << 18
# A large image is resized on the CPU in bands of at most this many input elements, so its
# float copy is never whole: an 81 Mpx photo would otherwise take 1 GB of float32 at once.
_RESIZE_BAND_ELEMENTS = 1 << 23


@dataclass(frozen=True, slots=True)
class Window:
    """One crop of one image, in that image's resized frame."""

    image: int
    y0: int
    x0: int
    h: int
    w: int


def resized_size(
    h0: int, w0: int, short_side: int | None, max_long_side: int | None = None
) -> tuple[int, int]:
    """The resized frame of an ``h0 x w0`` image (aspect kept, at least 1 px a side).

    Args:
        h0, w0: the original frame.
        short_side: the short side's length after resizing; ``None`` keeps the size.
        max_long_side: if the long side would then be longer, it gets exactly this length
            instead and the short side follows (mmcv's keep-ratio resize to ``(max_long_side,
            short_side)``); ``None``: no cap. Sizes whose long side is within the cap are
            those of ``short_side`` alone.

    Returns:
        ``(h, w)``.
    """
    h, w = h0, w0
    if short_side is not None:
        scale = short_side / min(h0, w0)
        h, w = max(1, round(h0 * scale)), max(1, round(w0 * scale))
    if max_long_side is None or max(h, w) <= max_long_side:
        return h, w
    if h0 >= w0:  # the long side is set exactly, not through a rounded scale
        return max_long_side, max(1, round(w0 * max_long_side / h0))
    return max(1, round(h0 * max_long_side / w0)), max_long_side


def resize_image(chw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """An image as float in [0, 1], resized (bilinear, antialiased) to ``size_hw``.

    A large image on the CPU is resized in two passes, its columns band of rows by band of
    rows, then its rows: the same numbers as one ``F.interpolate`` call (which makes the same
    two passes, as a test checks to the bit), without a float copy of the whole original.

    Args:
        chw: ``3 x H0 x W0`` uint8, or float in [0, 1].
        size_hw: the resized frame ``(h, w)`` (see :func:`resized_size`).

    Returns:
        ``3 x h x w`` float32 in [0, 1], on ``chw``'s device.
    """
    h0, w0 = int(chw.shape[1]), int(chw.shape[2])
    if (h0, w0) == tuple(size_hw):
        return _unit_float(chw)  # 3 x H0 x W0
    if chw.device.type != "cpu" or chw.numel() <= _RESIZE_BAND_ELEMENTS:
        return _resize(_unit_float(chw), size_hw)  # 3 x h x w
    h, w = size_hw
    band = max(1, _RESIZE_BAND_ELEMENTS // (3 * w0))
    # Written band by band into one tensor: joining a list of bands would hold both at once.
    columns = torch.empty((3, h0, w))  # 3 x H0 x w
    for top in range(0, h0, band):
        bottom = min(top + band, h0)
        columns[:, top:bottom] = _resize(_unit_float(chw[:, top:bottom]), (bottom - top, w))
    return _resize(columns, (h, w))  # 3 x h x w


def _unit_float(chw: torch.Tensor) -> torch.Tensor:
    # In place on the fresh float copy: a second temporary the size of the image otherwise.
    return chw.float().div_(255.0) if chw.dtype == torch.uint8 else chw.float()  # 3 x H x W


def _resize(chw: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(
        chw[None], size=size_hw, mode="bilinear", align_corners=False, antialias=True
    )[0]  # 3 x h x w


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


@dataclass(frozen=True, slots=True)
class WindowBatch:
    """Windows that went through the model together, and where their pixels land.

    Attributes:
        windows: the batch's windows (one padded size ``hp x wp``).
        features: ``B x gh x gw x E`` float32 dense features.
        index: ``B x hp x wp`` positions of the windows' pixels in the flat canvas (see
            :class:`WindowFeatures`); padding points at its last column.
        steps: positions in the batch, in steps of windows that do not overlap.
    """

    windows: list[Window]
    features: torch.Tensor
    index: torch.Tensor
    steps: list[torch.Tensor]


@dataclass(frozen=True, slots=True)
class WindowFeatures:
    """Every window's features for a set of images, with the canvas layout they stitch into:
    all images' canvases side by side as the columns of one flat tensor, ``starts[i]`` the
    first column of image ``i`` and ``starts[-1]`` a last column that takes the padding.

    Attributes:
        sizes_hw: each image's resized frame.
        starts: image ``i``'s pixels are columns ``starts[i] .. starts[i + 1]``.
        counts: per image, ``1 x h x w`` windows covering each pixel.
        patch: the backbone's patch size.
        batches: the windows, batch by batch.
    """

    sizes_hw: list[tuple[int, int]]
    starts: list[int]
    counts: list[torch.Tensor]
    patch: int
    batches: list[WindowBatch]


def window_features(
    images: Sequence[torch.Tensor],
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    patch: int,
    config: InferenceConfig,
) -> WindowFeatures:
    """Dense features of every window of ``images``, computed in shared batches, and the
    layout :func:`stitch` needs (computed once, however many name chunks are stitched).

    Args:
        images: per image a ``3 x h x w`` normalised tensor in the resized frame.
        features_fn: ``B x 3 x hp x wp -> B x hp/p x wp/p x E`` normalised dense features.
        patch: the backbone's patch size; windows are zero-padded to multiples of it.
        config: crop, stride and batch size.
    """
    sizes = [(int(im.shape[1]), int(im.shape[2])) for im in images]
    starts = [0]
    for h, w in sizes:
        starts.append(starts[-1] + h * w)
    windows = plan_windows(sizes, config.crop, config.stride)
    device = images[0].device
    batches = []
    for batch in batch_windows(windows, patch, config.batch_size):
        hp, wp = _pad_to(batch[0].h, patch), _pad_to(batch[0].w, patch)
        crops = torch.stack(
            [_padded_crop(images[win.image], win, hp, wp) for win in batch]
        )  # B x 3 x hp x wp
        features = features_fn(crops).float()  # B x gh x gw x E
        index = _flat_index(batch, sizes, starts, hp, wp, features.device)  # B x hp x wp
        batches.append(WindowBatch(batch, features, index, _steps(batch)))
    return WindowFeatures(sizes, starts, _coverage(sizes, windows, device), patch, batches)


def stitch(windowed: WindowFeatures, text: torch.Tensor) -> list[torch.Tensor]:
    """Window logits averaged on per-image canvases (the research repos' protocol: each
    window's logits are upsampled to the window before averaging).

    Args:
        windowed: from :func:`window_features`.
        text: ``N x E`` normalised name embeddings (or a chunk of the names).

    Returns:
        Per image ``N x h x w`` cosine-similarity logits in the resized frame.
    """
    patch, starts = windowed.patch, windowed.starts
    device = windowed.batches[0].features.device if windowed.batches else text.device
    names = text.shape[0]
    flat = torch.zeros((names, starts[-1] + 1), device=device)  # N x (pixels + 1)
    for batch in windowed.batches:
        hp, wp = _pad_to(batch.windows[0].h, patch), _pad_to(batch.windows[0].w, patch)
        features = batch.features
        logits = torch.einsum("bhwe,ne->bnhw", features, text.to(features))  # B x N x gh x gw
        logits = F.interpolate(
            logits, size=(hp, wp), mode="bilinear", align_corners=False
        )  # B x N x hp x wp
        # Windows of one step never overlap, so each pixel takes at most one add a step, in
        # the windows' own order: the same sums as adding window by window, whichever
        # images share the batch.
        for step in batch.steps:
            values = logits[step].transpose(0, 1).reshape(names, -1)  # N x k*hp*wp
            flat.index_add_(1, batch.index[step].reshape(-1), values)
    canvases = [
        flat[:, a:b].view(names, h, w)
        for a, b, (h, w) in zip(starts[:-1], starts[1:], windowed.sizes_hw, strict=True)
    ]
    return [canvas / count for canvas, count in zip(canvases, windowed.counts, strict=True)]


def _steps(batch: Sequence[Window]) -> list[torch.Tensor]:
    """Positions in ``batch`` in steps: windows of one step never overlap, and a window comes
    after every earlier window of its image that it overlaps (so each pixel sums its windows
    in their order). About rows + columns steps an image, not one a window."""
    step_of: list[int] = []
    earlier: dict[int, list[int]] = defaultdict(list)  # image -> positions so far
    for position, win in enumerate(batch):
        after = [step_of[p] for p in earlier[win.image] if _overlap(batch[p], win)]
        step_of.append(1 + max(after, default=-1))
        earlier[win.image].append(position)
    steps = torch.tensor(step_of)
    return [torch.nonzero(steps == k).flatten() for k in range(int(steps.max()) + 1)]


def _overlap(a: Window, b: Window) -> bool:
    return a.y0 < b.y0 + b.h and b.y0 < a.y0 + a.h and a.x0 < b.x0 + b.w and b.x0 < a.x0 + a.w


def _flat_index(
    batch: Sequence[Window],
    sizes_hw: Sequence[tuple[int, int]],
    starts: Sequence[int],
    hp: int,
    wp: int,
    device: torch.device,
) -> torch.Tensor:
    """``B x hp x wp`` positions of each window's padded pixels in the flat canvas; pixels
    outside the window (its zero padding) point at the last column."""
    y0, x0, h, w, width, start = (
        torch.tensor(values, device=device)[:, None, None]  # B x 1 x 1 each
        for values in zip(
            *((v.y0, v.x0, v.h, v.w, sizes_hw[v.image][1], starts[v.image]) for v in batch),
            strict=True,
        )
    )
    rows = torch.arange(hp, device=device)[None, :, None]  # 1 x hp x 1
    cols = torch.arange(wp, device=device)[None, None, :]  # 1 x 1 x wp
    index = start + (y0 + rows) * width + (x0 + cols)  # B x hp x wp
    inside = (rows < h) & (cols < w)  # B x hp x wp
    return torch.where(inside, index, starts[-1])


def _coverage(
    sizes_hw: Sequence[tuple[int, int]], windows: Sequence[Window], device: torch.device
) -> list[torch.Tensor]:
    """Per image, ``1 x h x w``: how many windows cover each pixel. Windows form a grid of
    row spans x column spans, so the count is an outer product of two 1-D counts."""
    rows = [torch.zeros(h) for h, _ in sizes_hw]
    cols = [torch.zeros(w) for _, w in sizes_hw]
    for image in range(len(sizes_hw)):
        mine = [win for win in windows if win.image == image]
        for y0, h in {(win.y0, win.h) for win in mine}:
            rows[image][y0 : y0 + h] += 1
        for x0, w in {(win.x0, win.w) for win in mine}:
            cols[image][x0 : x0 + w] += 1
    return [torch.outer(r, c)[None].to(device) for r, c in zip(rows, cols, strict=True)]


def stitch_logits(
    images: Sequence[torch.Tensor],
    text: torch.Tensor,
    features_fn: Callable[[torch.Tensor], torch.Tensor],
    patch: int,
    config: InferenceConfig,
) -> list[torch.Tensor]:
    """:func:`stitch` of :func:`window_features`: per image ``N x h x w`` logits."""
    return stitch(window_features(images, features_fn, patch, config), text)


def label_dtype(num_classes: int) -> torch.dtype:
    """The torch dtype labels are built in: uint8 up to 255 classes; beyond, int32 (torch has
    little uint16 support), cast to the uint16 of :func:`gclip.vocabulary.label_format`."""
    return torch.uint8 if num_classes <= UNLABELLED else torch.int32


class LabelAccumulator:
    """Labels and confidence of one image, from its logits fed a chunk of names at a time.

    The label is the class of the most probable name, and the confidence that name's
    probability under the softmax over *all* names: a running maximum and a running
    log-sum-exp make the result the same for any split of the names, so memory is bounded by
    the chunk, not the vocabulary. Logits are upsampled to the original frame in row bands.

    Memory, per pixel of the original frame: a float32 running maximum (which becomes the
    confidence in place) and a label; plus a float32 running log-sum-exp, unless ``names``
    says that one update brings every name (then it is used band by band and never stored).
    While a band is folded: its scaled logits (``N x b x W0``, at most ``_BAND_ELEMENTS``
    floats unless one row holds more) and two float32 maps of its pixels, the rest a block's.

    Args:
        size_hw: the original frame ``(H0, W0)``.
        logit_scale: softmax temperature over all names.
        thresholds: per class, the minimum probability to keep the label (``None``: keep).
        unlabelled: label value for pixels below their class's threshold.
        dtype: label dtype (``torch.uint8``, or ``torch.int32`` for more than 255 classes).
        device: where the running maps live.
        names: how many names the updates bring in all, when known.
    """

    def __init__(
        self,
        size_hw: tuple[int, int],
        logit_scale: float,
        thresholds: Sequence[float | None],
        unlabelled: int,
        dtype: torch.dtype,
        device: torch.device,
        names: int | None = None,
    ) -> None:
        self._size_hw = size_hw
        self._scale = logit_scale
        self._min_prob = torch.tensor([-1.0 if t is None else t for t in thresholds], device=device)
        self._unlabelled, self._dtype, self._names = unlabelled, dtype, names
        self._best = torch.full(size_hw, -torch.inf, device=device)  # H0 x W0 scaled logit
        self._label = torch.zeros(size_hw, dtype=dtype, device=device)  # H0 x W0 class
        self._lse: torch.Tensor | None = None  # H0 x W0 log-sum-exp, made by the first chunk
        self._seen = 0  # names folded in so far
        self._confident = False  # _best holds the confidence already
        self._done = False

    def update(self, logits: torch.Tensor, name_to_class: torch.Tensor) -> None:
        """Fold in ``N x h x w`` logits (resized frame) of names of classes ``name_to_class``."""
        assert not self._done and not self._confident, "every name has been folded in"
        whole = self._seen == 0 and logits.shape[0] == self._names
        self._seen += logits.shape[0]
        if not whole and self._lse is None:
            self._lse = torch.full(self._size_hw, -torch.inf, device=self._best.device)
        h0, w0 = self._size_hw
        band = max(1, _BAND_ELEMENTS // max(1, logits.shape[0] * w0))
        classes = name_to_class.to(logits.device, self._dtype)  # N
        for top in range(0, h0, band):
            self._fold(logits, classes, top, min(top + band, h0), whole)
        self._confident = whole

    def _fold(
        self, logits: torch.Tensor, classes: torch.Tensor, top: int, bottom: int, whole: bool
    ) -> None:
        """Rows ``top:bottom`` of :meth:`update` (a function, so one band's temporaries are
        freed before the next band's are made).

        The log-sum-exp is ``torch.logsumexp``'s own steps (amax, shift, exp, one sum, log,
        add), written out so that the scaled logits are exponentiated in place rather than
        copied twice, and the per-pixel steps run block by block (:meth:`_fold_block`).
        """
        scaled = upsample_rows(logits, self._size_hw, top, bottom).mul_(self._scale)  # N x b x W0
        shift = torch.empty(scaled.shape[1:], device=scaled.device)  # b x W0
        block = max(1, _BLOCK_PIXELS // scaled.shape[2])
        for start in range(0, bottom - top, block):
            stop = min(start + block, bottom - top)
            self._fold_block(scaled[:, start:stop], classes, top + start, shift[start:stop])
        lse = scaled.sum(dim=0).log_().add_(shift)  # b x W0, the sum over the whole band
        rows = slice(top, bottom)
        if whole:  # the log-sum-exp over all names is this one: the confidence now
            self._best[rows].sub_(lse).exp_()  # b x W0
        else:
            assert self._lse is not None
            self._lse[rows] = torch.logaddexp(self._lse[rows], lse)

    def _fold_block(
        self, scaled: torch.Tensor, classes: torch.Tensor, top: int, shift: torch.Tensor
    ) -> None:
        """Labels and running maximum of the rows from ``top`` that ``scaled`` (``N x s x W0``,
        a view of the band) holds; then ``shift`` (``s x W0``) gets the names' maximum and
        ``scaled`` becomes ``exp(scaled - shift)`` in place, as ``torch.logsumexp`` shifts."""
        rows = slice(top, top + scaled.shape[1])
        best, name = scaled.max(dim=0)  # s x W0 each
        better = best > self._best[rows]  # ties keep the earlier name, as argmax does
        self._label[rows] = torch.where(better, classes[name], self._label[rows])
        self._best[rows] = torch.maximum(best, self._best[rows])
        torch.amax(scaled, dim=0, out=shift)  # s x W0
        shift.masked_fill_(shift.abs() == torch.inf, 0.0)  # an infinite maximum shifts by 0
        scaled.sub_(shift).exp_()  # N x s x W0

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``H0 x W0`` labels (class index, or ``unlabelled`` below its threshold) and
        ``H0 x W0`` float32 confidence (probability of the chosen class's best name).

        Call once, after the last update: the running maps become the result, uncopied.
        """
        assert not self._done, "result() has consumed this accumulator"
        self._done = True
        if not self._confident:
            lse = self._lse if self._lse is not None else torch.full_like(self._best, -torch.inf)
            self._best.sub_(lse).exp_()  # H0 x W0, in place: exp(best - lse)
        self._lse = None
        confidence = self._best  # H0 x W0
        h0, w0 = self._size_hw
        # Blocks, because indexing the thresholds takes an int64 index: 8 B a pixel.
        band = max(1, _BLOCK_PIXELS // max(1, w0))
        for top in range(0, h0, band):
            label = self._label[top : top + band]  # b x W0
            keep = confidence[top : top + band] >= self._min_prob[label.long()]  # b x W0
            label.masked_fill_(~keep, self._unlabelled)
        return self._label, confidence


def labels_from_logits(
    logits: torch.Tensor,
    name_to_class: torch.Tensor,
    num_classes: int,
    logit_scale: float,
    thresholds: Sequence[float | None],
    size_hw: tuple[int, int],
    unlabelled: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Upsample ``N x h x w`` logits to ``size_hw`` and turn them into labels (uint8 up to 255
    classes, int32 beyond) and confidence, all names at once (see :class:`LabelAccumulator`)."""
    accumulator = LabelAccumulator(
        size_hw,
        logit_scale,
        thresholds,
        unlabelled,
        label_dtype(num_classes),
        logits.device,
        names=logits.shape[0],
    )
    accumulator.update(logits, name_to_class)
    return accumulator.result()


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
    # In place on the gathered copies: the numbers of x[:, y_lo] * (1 - weight) + ..., with
    # two N x b x w temporaries instead of four.
    rows = x[:, y_lo].mul_(1 - weight).add_(x[:, y_hi].mul_(weight))  # N x b x w
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
