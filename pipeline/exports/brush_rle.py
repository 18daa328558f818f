"""Label Studio's brush RLE, the encoding of its ``brushlabels`` masks, vectorised.

Label Studio stores a brush mask as an RGBA image (4 bytes a pixel, the mask in every
channel) packed by thi.ng's ``rle-pack``: a header (value count in 32 bits, word size - 1 in
5, then four run-length field widths - 1 in 4 bits each: 3, 4, 8, 16), then per run a flag bit
(1: a repeated value), 2 bits choosing the width of the length field, the length - 1, and the
8-bit value. :func:`encode` gives exactly the bytes of ``label_studio_sdk.converter.brush.
mask2rle(mask * 255)`` (tested against it, and against its ``decode_rle``), in numpy instead of
a Python loop over bit strings; the SDK is then needed only to test.
"""

from __future__ import annotations

import numpy as np

_SIZES = (3, 4, 8, 16)  # bits of the length field, by its 2-bit index
_WORD = 8
_CHANNELS = 4
_LONGEST = 1 << 16  # a run over this is cut into runs of this length, as the SDK cuts it


def encode(mask_hw: np.ndarray) -> list[int]:
    """The brush RLE of a mask.

    Args:
        mask_hw: ``H x W`` bool (or 0/1): the pixels of one class.

    Returns:
        The RLE bytes as ints (Label Studio's ``value.rle``), for an ``H x W`` image.
    """
    values = np.asarray(mask_hw, dtype=bool).ravel().astype(np.int64) * 255
    changes = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], changes))
    lengths = np.diff(np.concatenate((starts, [values.size]))) * _CHANNELS
    run_values = values[starts]
    # Runs over _LONGEST become ceil(n / _LONGEST) runs, all of _LONGEST but the last.
    pieces = -(-lengths // _LONGEST)
    value = np.repeat(run_values, pieces)
    length = np.full(int(pieces.sum()), _LONGEST, np.int64)
    last = np.cumsum(pieces) - 1
    length[last] = lengths - (pieces - 1) * _LONGEST
    index = np.searchsorted(np.array([8, 16, 256]), length, side="left")  # <=8, <=16, <=256
    size = np.array(_SIZES)[index]
    single = length == 1  # the SDK writes a run of one as a literal (flag 0), same width
    flag = (~single).astype(np.int64)
    width = 3 + size + _WORD
    code = (flag << (width - 1)) | (index << (size + _WORD)) | ((length - 1) << _WORD) | value
    header_code = np.array([values.size * _CHANNELS, _WORD - 1, *[s - 1 for s in _SIZES]])
    header_width = np.array([32, 5, 4, 4, 4, 4])
    bits = _bits(np.concatenate((header_code, code)), np.concatenate((header_width, width)))
    padding = 8 - bits.size % 8  # as the SDK pads: a whole zero byte when already aligned
    bits = np.concatenate((bits, np.zeros(padding, np.uint8)))
    return [int(b) for b in np.packbits(bits)]


def _bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The ``widths[i]`` low bits of each ``codes[i]``, most significant first, concatenated."""
    total = int(widths.sum())
    ends = np.cumsum(widths)
    position = np.arange(total) - np.repeat(ends - widths, widths)  # bit index within its field
    shift = np.repeat(widths, widths) - 1 - position
    return ((np.repeat(codes, widths) >> shift) & 1).astype(np.uint8)
