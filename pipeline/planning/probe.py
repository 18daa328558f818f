"""Manifest rows probed in parallel threads: image sizes from headers, sha256 of the bytes.

A size is read from the first :data:`HEAD_BYTES` of the file (one ranged read on object stores
and http), and from the whole file only when its header runs past them; no pixel is decoded.
Sizes are upright: EXIF orientations 5-8 swap width and height, as the labelling job's decoder
turns such images. A row that cannot be read or whose header is not an image's becomes an
:class:`~pipeline.formats.images.ImageFailure` and is left out of the probed rows.

The members of a tar (``uri`` ``<tar>#<member>``) are probed from one forward read of the
tar (:func:`pipeline.formats.tars.read_members`), a thread per tar, not a request each.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import BinaryIO

from PIL import ExifTags, Image
from tqdm import tqdm

from pipeline.formats.images import (
    MAX_PIXELS,
    ImageDecodeError,
    ImageFailure,
    decode,
    pillow_errors,
)
from pipeline.formats.storage import read_bytes, read_head
from pipeline.formats.tars import read_members, split_member
from pipeline.planning.rows import ManifestRow

HEAD_BYTES = 1 << 16  # a JPEG's EXIF block (with its thumbnail) fits in 64 KiB
DEFAULT_THREADS = 16  # reads are I/O-bound: object stores and web servers answer in parallel
_TURNED = (5, 6, 7, 8)  # EXIF orientations that rotate by 90 or 270 degrees


@dataclass(frozen=True, slots=True)
class Probed:
    """The readable rows with what was asked filled in, and the unreadable ones; both in the
    order of the rows given."""

    rows: tuple[ManifestRow, ...]
    unreadable: tuple[ImageFailure, ...]


def probe(
    rows: Sequence[ManifestRow],
    sizes: bool = True,
    sha256: bool = False,
    threads: int = DEFAULT_THREADS,
    progress: bool = True,
) -> Probed:
    """Read every row's image header (``sizes``) and/or bytes (``sha256``) in ``threads``.

    Args:
        rows: rows to probe; their order is kept.
        sizes: fill ``width`` and ``height`` (pixels, upright) from the image header.
        sha256: fill ``sha256`` (lower-case hex) from the whole file.
        threads: reads in flight at once.
        progress: show a tqdm bar on stderr (hidden when stderr is not a terminal).

    Returns:
        :class:`Probed`; an unreadable row is in ``unreadable`` only, with its error.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}.")

    def one(k: int) -> list[tuple[int, ManifestRow | ImageFailure]]:
        try:
            return [(k, _probe_row(rows[k], sizes, sha256))]
        except Exception as err:  # per-image boundary: one bad file never stops the listing
            return [(k, _failure(rows[k], err))]

    def tar(group: list[int]) -> list[tuple[int, ManifestRow | ImageFailure]]:
        return _probe_tar(rows, group, sizes, sha256)

    plain, in_tars = _by_tar(rows)
    results: list[ManifestRow | ImageFailure | None] = [None] * len(rows)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        futures = [pool.submit(tar, group) for group in in_tars]
        futures += [pool.submit(one, k) for k in plain]
        bar = tqdm(
            total=len(rows),
            desc="probing",
            unit="image",
            disable=None if progress else True,  # None: only on a terminal
        )
        with bar:
            for future in futures:
                done = future.result()
                for k, result in done:
                    results[k] = result
                bar.update(len(done))
    return Probed(
        tuple(r for r in results if isinstance(r, ManifestRow)),
        tuple(r for r in results if isinstance(r, ImageFailure)),
    )


def _failure(row: ManifestRow, err: BaseException) -> ImageFailure:
    return ImageFailure(row.image_id, row.uri, type(err).__name__, str(err) or repr(err))


def _by_tar(rows: Sequence[ManifestRow]) -> tuple[list[int], list[list[int]]]:
    """Positions of the rows that are plain files, and of the others, grouped by tar."""
    plain: list[int] = []
    tars: dict[str, list[int]] = {}
    for k, row in enumerate(rows):
        member = split_member(row.uri)
        if member is None:
            plain.append(k)
        else:
            tars.setdefault(member[0], []).append(k)
    return plain, list(tars.values())


def _probe_tar(
    rows: Sequence[ManifestRow], group: list[int], sizes: bool, sha256: bool
) -> list[tuple[int, ManifestRow | ImageFailure]]:
    """The rows at ``group`` (members of one tar) probed from one forward read of it; each
    member's bytes are dropped once its rows are probed."""
    tar = ""
    by_name: dict[str, list[int]] = {}
    offsets: dict[str, int] = {}
    for k in group:
        tar, name = split_member(rows[k].uri) or ("", "")
        by_name.setdefault(name, []).append(k)
        offset = rows[k].tar_offset
        if offset is not None:
            offsets[name] = offset
    out: list[tuple[int, ManifestRow | ImageFailure]] = []
    for name, data in read_members(tar, by_name, offsets):
        for k in by_name[name]:
            try:
                if isinstance(data, Exception):
                    raise data
                out.append((k, _from_bytes(rows[k], data, sizes, sha256)))
            except Exception as err:  # per-image boundary, as for files
                out.append((k, _failure(rows[k], err)))
    return out


def _from_bytes(row: ManifestRow, data: bytes, sizes: bool, sha256: bool) -> ManifestRow:
    if sha256:
        row = replace(row, sha256=hashlib.sha256(data).hexdigest())
    if sizes:
        width, height = image_size(io.BytesIO(data))
        row = replace(row, width=width, height=height)
    return row


def _probe_row(row: ManifestRow, sizes: bool, sha256: bool) -> ManifestRow:
    if sha256:
        data = read_bytes(row.uri)
        digest = hashlib.sha256(data).hexdigest()
        if not sizes:
            return replace(row, sha256=digest)
        width, height = image_size(io.BytesIO(data))
        return replace(row, width=width, height=height, sha256=digest)
    head = read_head(row.uri, HEAD_BYTES)
    try:
        width, height = image_size(io.BytesIO(head))
    except ImageDecodeError:
        if len(head) < HEAD_BYTES:  # that was the whole file
            raise
        width, height = image_size(io.BytesIO(read_bytes(row.uri)))
    return replace(row, width=width, height=height)


def image_size(file: BinaryIO) -> tuple[int, int]:
    """``(width, height)`` in pixels of the image in ``file``, upright per EXIF, from its header.

    ``file`` holds bytes in memory, so every error Pillow raises is about the bytes.

    Raises:
        ImageDecodeError: empty, not an image, or beyond the decompression-bomb limit.
    """
    if not file.read(1):
        decode(b"")  # raises the labelling job's own error for an empty file: the two agree
    file.seek(0)
    try:
        with pillow_errors(), Image.open(file) as image:
            width, height = image.size
            # PNG's getexif decodes the whole image when no eXIf chunk precedes the pixels;
            # such files are rare, and keep the header's size here.
            png_late_exif = image.format == "PNG" and "exif" not in image.info
            exif = {} if png_late_exif else image.getexif()
            orientation = exif.get(ExifTags.Base.Orientation, 1)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as err:  # the bytes are in memory: not I/O
        raise ImageDecodeError(f"corrupt or truncated image header: {err}") from err
    if width * height > MAX_PIXELS:
        raise ImageDecodeError(
            f"{width}x{height} exceeds the {MAX_PIXELS}-pixel decompression-bomb limit"
        )
    if width < 1 or height < 1:
        raise ImageDecodeError(f"the header gives an empty size {width}x{height}")
    return (height, width) if orientation in _TURNED else (width, height)
