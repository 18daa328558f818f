"""Image sources listed into manifest rows: folders, globs, ``s3://`` prefixes, COCO files, lists.

A SOURCE is read as the first of these that fits:

1. ``http(s)://...json``, ``.txt`` or ``.lst``: the file, fetched (URLs cannot be listed).
2. an existing folder or ``s3://bucket/prefix``: every image file under it, recursively,
   and every image member of every ``.tar`` under it (see :mod:`.tar_sources`).
3. an existing file: ``.json`` is a COCO file, ``.txt`` / ``.lst`` a list of paths or URIs
   (one a line; blank lines and ``#`` comments skipped), a ``.tar`` its image members, an
   image file is itself.
4. a pattern with ``*``, ``?`` or ``[...]`` (``**`` spans folders): the files it matches.

Folders and patterns keep files whose extension is in :data:`IMAGE_EXTENSIONS` (any case) and
whose path has no hidden part (``.DS_Store``, ``._a.jpg``, ``.cache/``); the rest are counted.
A link to a folder is counted and not entered (``ln -s .. up`` would list the tree again
inside itself, without end); with ``follow_links`` it is entered unless the folder it leads to
was already listed, so no folder, and no file, is listed twice. Links to files are files.

``image_id`` is the file's path relative to the folder (or to a pattern's fixed start), with
``/`` separators and its extension; a COCO image's ``file_name`` as written; a list line's path
relative to the list's folder when it lies under it, else its full URI. ``uri`` is an absolute
local path or a URI. Rows are sorted by ``image_id`` (code-point order), whatever the order of
the SOURCEs; two rows with one id, or one file listed twice, are refused.
"""

from __future__ import annotations

import collections
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.formats.layout import IMAGE_SUFFIXES
from pipeline.formats.storage import HTTP_SCHEMES, read_bytes, resolve
from pipeline.planning.rows import ManifestRow, SourceError
from pipeline.planning.tar_sources import (
    NO_COLUMNS,
    SIDECAR_SUFFIX,
    TAR_SUFFIX,
    TarSource,
    list_tars,
)

IMAGE_EXTENSIONS = frozenset(IMAGE_SUFFIXES)  # the suffixes label files drop, one home
LIST_EXTENSIONS = frozenset({".txt", ".lst"})
GLOB_CHARS = "*?["
MAX_LISTED = 5


@dataclass(frozen=True, slots=True)
class Listing:
    """Every SOURCE's rows, sorted by ``image_id``, and what the folders and patterns skipped.

    ``skipped`` pairs a reason (``".txt"``, ``"no extension"``, ``"hidden"``) with a count of
    files; ``links`` counts the links to folders that were not entered (all of them, or with
    ``follow_links`` those to a folder already listed). ``not_success`` counts img2dataset
    rows left out for their ``status``, ``not_success_in_tar`` those of them with an image
    in the tar; ``columns`` are the img2dataset columns joined onto tar members' rows
    (:mod:`pipeline.planning.tar_sources`).
    """

    rows: tuple[ManifestRow, ...]
    skipped: tuple[tuple[str, int], ...]
    links: int = 0
    not_success: int = 0
    not_success_in_tar: int = 0
    columns: pa.Schema = NO_COLUMNS


def list_sources(
    sources: Sequence[str], image_root: str | None = None, follow_links: bool = False
) -> Listing:
    """List every SOURCE into unique rows sorted by ``image_id``.

    Args:
        sources: folders, patterns, ``s3://`` prefixes, COCO ``.json`` and ``.txt``/``.lst``
            lists, local or remote (see the module's docstring).
        image_root: the folder that COCO ``file_name`` values are relative to; the COCO
            file's own folder when not given.
        follow_links: enter links to local folders, each folder once (see the module's
            docstring); by default they are counted in ``Listing.links`` and not entered.

    Raises:
        SourceError: a SOURCE that does not exist or is of no known kind, a malformed COCO
            file or list, ``image_root`` without a COCO SOURCE, or colliding rows.
    """
    if image_root is not None and not any(_suffix(s) == ".json" for s in sources):
        raise SourceError("--image-root applies to COCO .json SOURCEs, and none was given.")
    rows: list[ManifestRow] = []
    skipped: collections.Counter[str] = collections.Counter()
    walk = _Walk(follow_links, skipped, [])
    for source in sources:
        rows += _list_source(source, image_root, walk)
    in_tars = list_tars(walk.tars)
    rows += in_tars.rows
    skipped += in_tars.skipped
    _check_unique(rows, "image_id")
    _check_unique(rows, "uri")
    rows.sort(key=lambda r: r.image_id)
    links = skipped.pop(_LINK, 0)
    return Listing(
        tuple(rows),
        tuple(sorted(skipped.items())),
        links,
        in_tars.not_success,
        in_tars.not_success_in_tar,
        in_tars.schema,
    )


_LINK = "\0link"  # a key of the skip counter no file suffix can be


@dataclass(frozen=True, slots=True)
class _Walk:
    """How folders are walked, the counter of what the walks skip, and the tars they find
    (listed after the walks, several at once)."""

    follow_links: bool
    skipped: collections.Counter[str]
    tars: list[TarSource]


def _list_source(source: str, image_root: str | None, walk: _Walk) -> list[ManifestRow]:
    suffix = _suffix(source)
    if urlsplit(source).scheme.lower() in HTTP_SCHEMES:
        if suffix == ".json" or suffix in LIST_EXTENSIONS:
            return _from_file(source, suffix, image_root)
        raise SourceError(
            f"{source}: an http(s) SOURCE must be a COCO .json or a .txt/.lst list, since web "
            "folders cannot be listed. Put the image URLs in a text file, one a line."
        )
    fs, path = resolve(source)
    kind = fs.get_file_info(path).type
    prefix = "" if isinstance(fs, pafs.LocalFileSystem) else f"{urlsplit(source).scheme}://"
    if kind == pafs.FileType.Directory:
        root = path.rstrip("/") or "/"
        return _walk(fs, root, prefix, None, source, walk)
    if kind == pafs.FileType.File:
        if suffix == ".json" or suffix in LIST_EXTENSIONS:
            return _from_file(source, suffix, image_root)
        if suffix in IMAGE_EXTENSIONS:
            return [ManifestRow(PurePosixPath(path).name, prefix + path, source)]
        if path.endswith(TAR_SUFFIX):
            sidecar = path.removesuffix(TAR_SUFFIX) + SIDECAR_SUFFIX
            beside = fs.get_file_info(sidecar).type == pafs.FileType.File
            name = PurePosixPath(path).name.removesuffix(TAR_SUFFIX)
            walk.tars.append(
                TarSource(prefix + path, name, prefix + sidecar if beside else None, source)
            )
            return []
        raise SourceError(
            f"{source} is a file of no known kind: a SOURCE file is a COCO .json, a .txt/.lst "
            f"list, a .tar or an image ({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    if any(ch in path for ch in GLOB_CHARS):
        parts = path.split("/")
        fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in GLOB_CHARS))
        root = "/".join(parts[:fixed]) or "/"
        pattern = glob_regex("/".join(parts[fixed:]))
        return _walk(fs, root, prefix, pattern, source, walk)
    raise SourceError(f"SOURCE {source} does not exist (resolved to {path}).")


def _walk(
    fs: pafs.FileSystem,
    root: str,
    prefix: str,
    pattern: re.Pattern[str] | None,
    source: str,
    walk: _Walk,
) -> list[ManifestRow]:
    """The image files under ``root`` (those ``pattern`` matches, if given), ids relative;
    the tars among them go to ``walk.tars``, with the img2dataset Parquet beside each."""
    rows = []
    if isinstance(fs, pafs.LocalFileSystem):
        entries = list(_local_files(root, walk))
    else:  # object stores have no links
        selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
        infos = fs.get_file_info(selector)
        entries = [(i.path, i.is_file) for i in infos if i.type != pafs.FileType.Directory]
    files = {path for path, is_file in entries if is_file}
    for path, is_file in entries:
        relative = path[len(root) :].lstrip("/")
        if pattern is not None and not pattern.fullmatch(relative):
            continue
        suffix = PurePosixPath(relative).suffix.lower()
        if any(part.startswith(".") for part in relative.split("/")):
            walk.skipped["hidden"] += 1
        elif not is_file:
            walk.skipped["broken link or not a file"] += 1
        elif relative.endswith(TAR_SUFFIX):
            sidecar = path.removesuffix(TAR_SUFFIX) + SIDECAR_SUFFIX
            parquet = prefix + sidecar if sidecar in files else None
            tar = TarSource(prefix + path, relative.removesuffix(TAR_SUFFIX), parquet, source)
            walk.tars.append(tar)
        elif suffix == SIDECAR_SUFFIX and path.removesuffix(SIDECAR_SUFFIX) + TAR_SUFFIX in files:
            continue  # a tar's img2dataset Parquet: joined onto its rows
        elif suffix not in IMAGE_EXTENSIONS:
            walk.skipped[suffix or "no extension"] += 1
        else:
            rows.append(ManifestRow(relative, prefix + path, source))
    return rows


def _local_files(root: str, walk: _Walk) -> Iterator[tuple[str, bool]]:
    """``(path, is a file)`` of everything under a local ``root`` but its folders, links to
    folders entered as ``walk`` says (a link to a file is a file; a broken link is not).

    Every folder is listed once, by its real path: each one not reached through a link
    first, then those behind links (with ``follow_links``), in name order, so the same tree
    gives the same paths whatever the order the file system lists it in.
    """
    if not os.path.isdir(root):  # a pattern's fixed start that does not exist: no match
        return
    seen: set[str] = set()
    real: list[str] = [root]  # stacks of folders to list: not reached through a link
    linked: list[str] = []  # reached through one
    while real or linked:
        folder = real.pop() if real else linked.pop()
        key = os.path.realpath(folder)
        if key in seen:  # reached again through a link: a loop, or a second way in
            walk.skipped[_LINK] += 1
            continue
        seen.add(key)
        with os.scandir(folder) as scan:
            entries = sorted(scan, key=lambda e: e.name)
        below, links = [], []
        for entry in entries:
            if not entry.is_dir():
                yield entry.path, entry.is_file()
            elif not entry.is_symlink():
                below.append(entry.path)
            elif walk.follow_links:
                links.append(entry.path)
            else:
                walk.skipped[_LINK] += 1
        real += reversed(below)
        linked += reversed(links)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A ``/``-separated glob as a regex on relative paths: ``*``, ``?`` and ``[...]`` stay
    within one folder name, a ``**`` part spans any number of folders (none included)."""
    out = []
    parts = pattern.split("/")
    for k, part in enumerate(parts):
        last = k == len(parts) - 1
        if part == "**":
            out.append(".*" if last else "(?:[^/]*/)*")
            continue
        i, segment = 0, []
        while i < len(part):
            ch = part[i]
            close = part.find("]", i + 2) if ch == "[" else -1
            if ch == "*":
                segment.append("[^/]*")
            elif ch == "?":
                segment.append("[^/]")
            elif close > 0:  # a class: [abc], [!abc] (a "]" right after "[" is a member)
                body = part[i + 1 : close]
                negate = body[:1] == "!"
                body = re.sub(r"([\\\[\]^])", r"\\\1", body[1:] if negate else body)  # "-" kept
                segment.append(f"[{'^/' if negate else ''}{body}]")
                i = close
            else:
                segment.append(re.escape(ch))
            i += 1
        out.append("".join(segment) + ("" if last else "/"))
    return re.compile("".join(out))


def _from_file(source: str, suffix: str, image_root: str | None) -> list[ManifestRow]:
    """Rows of a COCO file or of a list, read from any location :func:`read_bytes` reads."""
    try:
        text = read_bytes(source).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SourceError(f"{source} is not UTF-8 text: {err}") from err
    folder = _parent(source)
    if suffix != ".json":
        return _list_rows(text, source, folder)
    try:
        coco = json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(f"{source} is not valid JSON: {err}") from err
    return _coco_rows(coco, source, image_root or folder)


def _coco_rows(coco: Any, source: str, root: str) -> list[ManifestRow]:
    images = coco.get("images") if isinstance(coco, dict) else None
    if not isinstance(images, list):
        raise SourceError(
            f"{source} has no 'images' list, so it is not a COCO file. A .json SOURCE must be "
            "COCO; list plain paths in a .txt file instead."
        )
    rows = []
    for k, image in enumerate(images):
        name = image.get("file_name") if isinstance(image, dict) else None
        if not isinstance(name, str) or not name:
            raise SourceError(f"{source}: images[{k}] has no 'file_name' string.")
        width, height = (
            _size_field(image, key, f"{source} images[{k}]") for key in ("width", "height")
        )
        rows.append(ManifestRow(name, _join(root, name), f"{source} images[{k}]", width, height))
    return rows


def _size_field(image: dict[str, Any], key: str, where: str) -> int | None:
    value = image.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SourceError(f"{where}: {key} must be a positive integer, not {value!r}.")
    return value


def _list_rows(text: str, source: str, folder: str) -> list[ManifestRow]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        uri = _join(folder, entry)
        rows.append(ManifestRow(_relative(uri, folder) or uri, uri, f"{source} line {number}"))
    return rows


def _check_unique(rows: Iterable[ManifestRow], key: str) -> None:
    groups: dict[str, list[ManifestRow]] = collections.defaultdict(list)
    for row in rows:
        groups[getattr(row, key)].append(row)
    repeated = sorted((v, g) for v, g in groups.items() if len(g) > 1)
    if not repeated:
        return
    shown = "; ".join(
        f"{value!r}: "
        + ", ".join(f"{r.uri if key == 'image_id' else r.image_id} ({r.origin})" for r in group)
        for value, group in repeated[:MAX_LISTED]
    )
    more = f"; and {len(repeated) - MAX_LISTED} more" if len(repeated) > MAX_LISTED else ""
    if key == "image_id":
        raise SourceError(
            f"{len(repeated)} image_id(s) name more than one row: {shown}{more}. Ids must be "
            "unique: pass the folders' common parent as one SOURCE (ids then keep the folder "
            "names), or drop the repeated lines from the list."
        )
    raise SourceError(
        f"{len(repeated)} file(s) are listed more than once: {shown}{more}. The SOURCEs "
        "overlap (a folder and a folder or pattern inside it?): give each file once."
    )


def _suffix(location: str) -> str:
    return PurePosixPath(urlsplit(location).path if "://" in location else location).suffix.lower()


def _is_uri(location: str) -> bool:
    return len(urlsplit(location).scheme) > 1  # one letter: a Windows drive


def _parent(location: str) -> str:
    """The folder of a file, as a local absolute path or a URI."""
    if _is_uri(location) and not location.startswith("file://"):
        return location.rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(location.removeprefix("file://")))


def _join(folder: str, entry: str) -> str:
    """``entry`` as an absolute path or URI; a relative path is taken from ``folder``."""
    if entry.startswith("file://"):
        return os.path.abspath(entry.removeprefix("file://"))
    if _is_uri(entry):
        return entry
    if _is_uri(folder) and not os.path.isabs(entry):
        return f"{folder.rstrip('/')}/{entry}"
    return os.path.abspath(os.path.join(folder, entry))  # an absolute entry replaces folder


def _relative(uri: str, folder: str) -> str | None:
    """``uri``'s path below ``folder`` with ``/`` separators, or None when not below it."""
    base = folder.rstrip("/") + "/" if _is_uri(folder) else os.path.join(folder, "")
    if not uri.startswith(base):
        return None
    return uri[len(base) :].replace(os.sep, "/")
