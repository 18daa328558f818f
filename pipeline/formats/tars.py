"""Tar members read in place: WebDataset and img2dataset shards as images, one read per tar.

A manifest row names a member of a tar as ``<tar uri>#<member name>`` (the tar is the part
before the first ``.tar#``; ``#`` is never URL-encoded). A member's WebDataset key is its path
up to the first dot of its file name (``sub.dir/000001.seg.png`` has the key
``sub.dir/000001`` and the extension ``seg.png``).

A tar has no index: listing it reads its headers (:func:`index_tar`), and reading members
(:func:`read_members`) goes forward through the file once, in ranged reads of
:data:`CHUNK_BYTES` (one request each on object stores), from the header of the first member
wanted (its ``tar_offset``, when the manifest has it) to the last. Tar headers are
self-contained, so a read can start at any member's header. A damaged header is skipped,
block by block, to the next good one: that member alone is missing. A tar cut short fails
the members it lost; those before the cut are read.
"""

from __future__ import annotations

import contextlib
import io
import re
import tarfile
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.formats.descriptors import ImageRecord
from pipeline.formats.storage import resolve, retrying

CHUNK_BYTES = 8 << 20  # per ranged read: few requests per tar, a bounded buffer per reader
# A uri names a tar member when it holds ".tar#": the tar up to it, the member after it (a
# plain file may have "#" in its name). The planner's vectorised twin reads this constant.
TAR_MEMBER = ".tar#"
_MEMBER = re.compile(re.escape(TAR_MEMBER))


class TarTruncatedError(OSError):
    """The tar ends before a member's data does (it was cut short, or is still being written)."""


@dataclass(frozen=True, slots=True)
class TarEntry:
    """A regular file in a tar: its name, the byte offset of its (first) header, its size."""

    name: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class TarIndex:
    """A tar's regular files whole in it (archive order), and what listing them found amiss.

    Attributes:
        entries: the members whose data lies wholly inside the file.
        cut: members whose data runs past the file's end (a truncated tar).
        damaged: whether a header could not be read and was skipped.
        not_files: links, folders and other members that are not regular files.
    """

    entries: tuple[TarEntry, ...]
    cut: int = 0
    damaged: bool = False
    not_files: int = 0


def split_member(uri: str) -> tuple[str, str] | None:
    """``(tar uri, member name)`` of a tar member's uri, or None for any other uri."""
    match = _MEMBER.search(uri)
    if match is None:
        return None
    return uri[: match.end() - 1], uri[match.end() :]


def member_uri(tar: str, name: str) -> str:
    """The uri of member ``name`` of ``tar`` (the inverse of :func:`split_member`)."""
    return f"{tar}#{name}"


def webdataset_key(name: str) -> tuple[str, str]:
    """``(key, extension)`` of a member name, as WebDataset splits it; a leading ``./`` is
    dropped from the key (``tar -cf x.tar .`` writes one)."""
    folder, _, file_name = name.rpartition("/")
    stem, _, extension = file_name.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    while key.startswith("./"):
        key = key[2:]
    return key, extension


def index_tar(uri: str) -> TarIndex:
    """The regular files of the tar at ``uri`` (local or object store), from its headers.

    Raises:
        OSError: the tar cannot be opened or read.
    """
    fs, path = resolve(uri)
    with fs.open_input_file(path) as handle:
        size = handle.size()
        reader = io.BufferedReader(_Ranges(handle, uri, size), CHUNK_BYTES)
        entries, cut, not_files, expected, damaged = [], 0, 0, 0, False
        try:
            with (
                tarfile.open(fileobj=reader, mode="r:", ignore_zeros=True) as archive,
                contextlib.suppress(tarfile.ReadError),  # raised past a cut, once listed
            ):
                for info in archive:
                    damaged |= info.offset != expected  # headers were skipped to reach it
                    expected = info.offset_data + -(-info.size // 512) * 512
                    if not info.isreg():
                        not_files += not info.isdir()
                    elif info.offset_data + info.size > size:
                        cut += 1
                    else:
                        entries.append(TarEntry(info.name, info.offset, info.size))
        except tarfile.ReadError as err:  # from the first header (an empty file)
            raise OSError(f"{uri} is not a readable tar: {err}") from err
        if not expected and size:  # no member: a tar if its first block is zeros (empty)
            damaged = handle.read_at(min(size, 512), 0).strip(b"\0") != b""
    return TarIndex(tuple(entries), cut, damaged, not_files)


def read_members(
    tar: str, names: Iterable[str], offsets: dict[str, int] | None = None
) -> Iterator[tuple[str, bytes | Exception]]:
    """Each of ``names`` with its bytes, or the error that stopped it, from one forward read.

    Args:
        tar: the tar's location (local path, ``file://`` or ``s3://``...).
        names: member names wanted; each is yielded once, found ones in archive order, then
            the missing ones in the order given.
        offsets: header offsets of members (from the manifest's ``tar_offset``); when every
            wanted member has one the read starts at the first of them, else at byte 0. An
            offset that no longer points at its member (the tar was rewritten) costs one more
            read from byte 0.

    Yields:
        ``(name, data)``; ``data`` is an exception for a member that is not in the tar
        (:class:`FileNotFoundError`; a damaged header loses its member alone), that the tar
        ends before (:class:`TarTruncatedError`), or when the tar cannot be read at all.
    """
    wanted = dict.fromkeys(names)
    known = [offsets[n] for n in wanted if offsets and offsets.get(n) is not None]
    start = min(known) if known and len(known) == len(wanted) else 0
    left = set(wanted)
    end: Exception | None = None
    try:
        stale = yield from _scan(tar, left, start)
        if stale:  # the offset led elsewhere: read the whole tar instead
            yield from _scan(tar, left, 0)
    except Exception as err:  # cut short, or unreadable as a whole: each member left fails
        end = err
    for name in wanted:
        if name in left:
            yield (
                name,
                end
                or FileNotFoundError(f"{tar} holds no member {name!r} (or its header is damaged)"),
            )


def record_bytes(
    records: Sequence[ImageRecord],
) -> Iterator[tuple[ImageRecord, bytes | Exception | None]]:
    """Every record once, a tar member with its bytes (or the error that stopped them), any
    other with ``None`` (its file is read by the caller).

    Each tar is read once, forward (:func:`read_members`), when its first record comes up:
    its members come in archive order, the records between them as they come.
    """
    by_tar: dict[str, dict[str, list[ImageRecord]]] = {}
    for rec in records:
        member = split_member(rec.uri)
        if member is not None:
            by_tar.setdefault(member[0], {}).setdefault(member[1], []).append(rec)
    for rec in records:
        member = split_member(rec.uri)
        if member is None:
            yield rec, None
            continue
        group = by_tar.pop(member[0], None)
        if group is None:  # this tar was read at its first record
            continue
        offsets = {name: recs[0].tar_offset for name, recs in group.items()}
        known = {name: offset for name, offset in offsets.items() if offset is not None}
        for name, data in read_members(member[0], group, known):
            for each in group[name]:  # two rows naming one member: both get its bytes
                yield each, data


def _scan(
    tar: str, left: set[str], start: int
) -> Generator[tuple[str, bytes | Exception], None, bool]:
    """Members of ``left`` from byte ``start`` on (each removed from ``left`` once yielded),
    stopping when none is left. Returns True, before yielding anything, when ``start`` > 0
    and no header of ``left`` is there (a stale offset)."""
    fs, path = resolve(tar)
    before = len(left)
    with fs.open_input_file(path) as handle:
        stream = io.BufferedReader(_Ranges(handle, tar, handle.size(), start), CHUNK_BYTES)
        try:
            with tarfile.open(fileobj=stream, mode="r|", ignore_zeros=True) as archive:
                return (yield from _wanted(archive, tar, left, start))
        except tarfile.ReadError as err:  # the file ends inside a header or a member skipped
            if start and len(left) == before:  # nothing where the offset pointed
                return True
            raise TarTruncatedError(f"{tar} ends early, before this member ({err})") from err


def _wanted(
    archive: tarfile.TarFile, tar: str, left: set[str], start: int
) -> Generator[tuple[str, bytes | Exception], None, bool]:
    """:func:`_scan` over an open archive."""
    first = True
    for info in archive:
        if first and start and (info.offset != 0 or info.name not in left):
            return True
        first = False
        if info.name in left:
            left.discard(info.name)
            yield info.name, _data(archive, info, tar)
            if not left:
                break
    return first and start > 0  # no header at all where one was expected


def _data(archive: tarfile.TarFile, info: tarfile.TarInfo, tar: str) -> bytes | Exception:
    if not info.isreg():
        return IsADirectoryError(f"{tar} member {info.name!r} is not a regular file")
    try:
        extracted = archive.extractfile(info)
        assert extracted is not None  # a regular file always has data
        return extracted.read()
    except tarfile.ReadError as err:
        return TarTruncatedError(f"{tar} ends inside member {info.name!r} ({err})")


class _Ranges(io.RawIOBase):
    """A file read forward from ``start`` in ranged reads, each retried if transient; seeks
    (which random-access listing makes past each member's data) only move the position."""

    def __init__(self, handle: Any, uri: str, size: int, start: int = 0) -> None:
        self._handle, self._uri, self._size, self._pos = handle, uri, size, start
        self._start = start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}
        self._pos = max(self._start, base[whence] + offset)
        return self._pos - self._start

    def readinto(self, buffer: Any) -> int:
        size = min(len(buffer), self._size - self._pos)
        if size <= 0:
            return 0
        pos = self._pos
        data = retrying(lambda: self._handle.read_at(size, pos), f"{self._uri} at byte {pos}")
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)
