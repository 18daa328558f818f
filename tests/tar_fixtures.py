"""WebDataset / img2dataset folders for the tar tests, written with Python's ``tarfile``, and a
file system wrapper that counts the reads made of them."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.formats import tars as tars_module


def image_bytes(index: int, fmt: str = "PNG") -> bytes:
    """A small image split bright | dark at a column that depends on ``index`` (so the fake
    segmenter's labels differ from image to image)."""
    array = np.full((6 + index % 4, 10 + index % 3, 3), 20, np.uint8)
    array[:, : 2 + index % 7] = 240
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt)
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes | None]]) -> dict[str, int]:
    """A tar of ``members`` (``None``: a folder entry), in order; name -> header offset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as archive:
        return {m.name: m.offset for m in archive.getmembers()}


# The WebDataset tar: dotted folder names, a key with two images, non-image, hidden and
# folder members. Its image members, with the ids jobs.manifest gives them.
PLAIN_TAR = {
    "sub.dir/000001.png": "shards/00000/sub.dir/000001",
    "sub.dir/000002.jpg": "shards/00000/sub.dir/000002",
    "000003.png": "shards/00000/000003.png",  # one key, two images: ids keep the names
    "000003.seg.png": "shards/00000/000003.seg.png",
}
# The img2dataset tar: key -> status in its Parquet (None: the key has no Parquet row).
I2D_KEYS = {
    "000010000": "success",
    "000010001": "success",
    "000010002": "failed_to_resize",  # in the tar all the same: left out
    "000010003": "success",
    "000010004": None,  # in the tar, not in the Parquet: kept, its columns null
}
I2D_MISSING = "000010009"  # failed_to_download: in the Parquet only


@dataclass
class Folder:
    """A folder of tars (and one plain image) and what jobs.manifest should make of it."""

    root: Path
    offsets: dict[str, dict[str, int]]  # tar file name -> member -> header offset
    data: dict[str, bytes] = field(default_factory=dict)  # image_id -> the image's bytes

    def tar(self, name: str) -> Path:
        return self.root / "shards" / name


def webdataset_folder(root: Path) -> Folder:
    """``root/shards/00000.tar`` (WebDataset, no Parquet), ``root/shards/00001.tar`` with its
    img2dataset ``00001.parquet`` and ``00001_stats.json``, and ``root/plain/a.png``."""
    folder = Folder(root, {})
    data = {
        name: image_bytes(k, "JPEG" if name.endswith(".jpg") else "PNG")
        for k, name in enumerate(PLAIN_TAR)
    }
    folder.data |= {PLAIN_TAR[name]: content for name, content in data.items()}
    members: list[tuple[str, bytes | None]] = [
        ("sub.dir", None),  # archive order is not the ids' order
        ("sub.dir/000001.png", data["sub.dir/000001.png"]),
        ("sub.dir/000001.txt", b"a caption"),
        ("sub.dir/000002.jpg", data["sub.dir/000002.jpg"]),
        ("sub.dir/000002.json", b"{}"),
        ("000003.png", data["000003.png"]),
        ("000003.seg.png", data["000003.seg.png"]),
        ("._000004.png", image_bytes(9)),  # hidden (macOS tar's resource forks)
        ("notes", b"no extension"),
    ]
    folder.offsets["00000.tar"] = write_tar(folder.tar("00000.tar"), members)
    members = []
    sizes = {}
    for k, key in enumerate(I2D_KEYS):
        content = image_bytes(10 + k, "JPEG")
        sizes[key] = Image.open(io.BytesIO(content)).size
        if I2D_KEYS[key] != "failed_to_resize":
            folder.data[f"shards/00001/{key}"] = content
        members += [(f"{key}.jpg", content), (f"{key}.txt", b"cap"), (f"{key}.json", b"{}")]
    folder.offsets["00001.tar"] = write_tar(folder.tar("00001.tar"), members)
    rows = [k for k, status in I2D_KEYS.items() if status] + [I2D_MISSING]
    status = [I2D_KEYS.get(k) or "failed_to_download" for k in rows]
    ok = [s == "success" for s in status]
    table = pa.table(
        {
            "key": rows,
            "url": [f"https://example.com/{k}.jpg" for k in rows],
            "caption": [f"caption {k}" for k in rows],
            "status": status,
            "error_message": [None if s else "failed" for s in ok],
            "width": pa.array([sizes[k][0] if s else None for k, s in zip(rows, ok, strict=True)]),
            "height": pa.array([sizes[k][1] if s else None for k, s in zip(rows, ok, strict=True)]),
            "sha256": ["0" * 64 if s else None for s in ok],  # of the download: not ours
        }
    )
    pq.write_table(table, folder.tar("00001.parquet"))
    folder.tar("00001_stats.json").write_text("{}")
    (root / "plain").mkdir()
    folder.data["plain/a.png"] = image_bytes(20)
    (root / "plain" / "a.png").write_bytes(folder.data["plain/a.png"])
    return folder


class Reads:
    """Counts what :mod:`pipeline.formats.tars` reads: opens of a tar and ranged reads, each
    with its tar, and the shard (``mark``) it was read for."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[int, str, str, int]] = []  # (shard, "open"/"read", tar, bytes)
        self.shard = -1
        real = tars_module.resolve

        def resolve(location: str):
            fs, path = real(location)
            return _CountingFS(fs, self, location), path

        monkeypatch.setattr(tars_module, "resolve", resolve)

    def count(self, kind: str, tar: str | None = None, shard: int | None = None) -> int:
        return sum(
            1
            for s, k, t, _ in self.events
            if k == kind and (tar is None or t == tar) and (shard is None or s == shard)
        )


class _CountingFS:
    def __init__(self, fs, reads: Reads, location: str) -> None:
        self.fs, self.reads, self.location = fs, reads, location

    def open_input_file(self, path):
        self.reads.events.append((self.reads.shard, "open", self.location, 0))
        return _CountingFile(self.fs.open_input_file(path), self)


class _CountingFile:
    def __init__(self, handle, fs: _CountingFS) -> None:
        self.handle, self.fs = handle, fs

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def size(self) -> int:
        return self.handle.size()

    def read_at(self, size: int, offset: int) -> bytes:
        data = self.handle.read_at(size, offset)
        self.fs.reads.events.append((self.fs.reads.shard, "read", self.fs.location, len(data)))
        return data
