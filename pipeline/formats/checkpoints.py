"""Weights that live on object stores, fetched once per node into a local cache.

``--pretrained s3://bucket/vit-b-16.pt`` (any ``pyarrow.fs`` URI) and ``--model
local-dir:s3://bucket/models/demo`` are copied to ``$GCLIP_LABEL_CACHE`` (default
``~/.cache/gclip-label``) on each node that needs them, under a key of the URI, size and
modification time: a changed object is fetched anew, an unchanged one never twice. Workers of
one node share a download through a file lock. A fetched file is verified against the object's
size and, when the store holds ``<uri>.sha256`` beside it, against that digest.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

from gclip.catalog import LOCAL_DIR, is_remote, local_dir
from gclip.config import SHIPPED_FILE, ShippedSettings, read_shipped
from pipeline.errors import InputError
from pipeline.formats.storage import read_bytes, resolve, retrying

log = logging.getLogger(__name__)

_CHUNK = 8 << 20


def cache_root() -> Path:
    return Path(os.environ.get("GCLIP_LABEL_CACHE", Path.home() / ".cache" / "gclip-label"))


def shipped_settings(model: str) -> ShippedSettings:
    """The settings ``model``'s checkpoint ships, read without loading it (or torch).

    Local and remote ``local-dir:`` folders (and ``demo``) may ship a ``gclip.json``; other
    models ship none.
    """
    folder = local_dir(model)
    if folder is not None:
        return read_shipped(folder)
    if not model.startswith(LOCAL_DIR):
        return ShippedSettings()
    uri = f"{model.removeprefix(LOCAL_DIR).rstrip('/')}/{SHIPPED_FILE}"
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        return ShippedSettings()
    return ShippedSettings.from_json(json.loads(data), uri)


def localize(model: str, pretrained: str | None) -> tuple[str, str | None]:
    """``(model, pretrained)`` with remote locations replaced by local cached copies."""
    if model.startswith(LOCAL_DIR) and is_remote(model.removeprefix(LOCAL_DIR)):
        model = f"{LOCAL_DIR}{fetch_folder(model.removeprefix(LOCAL_DIR))}"
    if pretrained is not None and is_remote(pretrained):
        pretrained = str(fetch_file(pretrained))
    return model, pretrained


def fetch_file(uri: str) -> Path:
    """A local copy of the object at ``uri``, fetched unless the cache holds it already."""
    fs, path = resolve(uri)
    info = retrying(lambda: fs.get_file_info(path), uri)
    if info.type != pafs.FileType.File:
        raise InputError(f"Checkpoint {uri} does not exist (or is a folder).")
    folder = cache_root() / "checkpoints" / _key(uri, info)
    return _fetch(fs, path, uri, info.size, folder / os.path.basename(path))


def fetch_folder(uri: str) -> Path:
    """A local copy of the files directly in the folder at ``uri`` (a local-dir model)."""
    fs, base = resolve(uri)
    selector = pafs.FileSelector(base.rstrip("/"), allow_not_found=True)
    infos = [i for i in retrying(lambda: fs.get_file_info(selector), uri) if i.is_file]
    if not any(i.base_name == "open_clip_config.json" for i in infos):
        raise InputError(
            f"{uri} holds no open_clip_config.json; a local-dir model needs that file and "
            "open_clip_model.safetensors or open_clip_pytorch_model.bin beside it."
        )
    key = hashlib.sha256(
        json.dumps([uri, *((i.base_name, i.size, i.mtime_ns) for i in infos)]).encode()
    ).hexdigest()[:24]
    folder = cache_root() / "models" / key
    for info in infos:
        _fetch(
            fs, info.path, f"{uri.rstrip('/')}/{info.base_name}", info.size, folder / info.base_name
        )
    return folder


def file_digest(path: str | Path) -> str:
    """sha256 of a local file, remembered per node by path, size and modification time."""
    stat = Path(path).stat()
    record = (
        cache_root() / "digests" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
    )
    stamp = [str(path), stat.st_size, stat.st_mtime_ns]
    if record.is_file():
        known = json.loads(record.read_text())
        if known["stamp"] == stamp:
            return str(known["sha256"])
    digest = _sha256(Path(path))
    record.parent.mkdir(parents=True, exist_ok=True)
    temp = record.with_suffix(f".{os.getpid()}.tmp")
    temp.write_text(json.dumps({"stamp": stamp, "sha256": digest}))
    os.replace(temp, record)
    return digest


def _fetch(fs: pafs.FileSystem, path: str, uri: str, size: int, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.with_name(target.name + ".lock")):
        if target.is_file() and target.stat().st_size == size:
            return target
        log.info("fetching %s (%.1f MB) into %s", uri, size / 1e6, target)
        temp = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            retrying(lambda: _copy(fs, path, temp), uri)
            if temp.stat().st_size != size:
                raise OSError(f"fetched {temp.stat().st_size} of {size} bytes of {uri}")
            _verify_sidecar(uri, temp)
            os.replace(temp, target)
        finally:
            temp.unlink(missing_ok=True)
    return target


def _copy(fs: pafs.FileSystem, path: str, temp: Path) -> None:
    with fs.open_input_stream(path) as source, open(temp, "wb") as sink:
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
        sink.flush()
        os.fsync(sink.fileno())


def _verify_sidecar(uri: str, local: Path) -> None:
    """Check ``local`` against ``<uri>.sha256`` when the store has one."""
    try:
        expected = read_bytes(f"{uri}.sha256").decode().split()[0].lower()
    except FileNotFoundError:
        return
    actual = _sha256(local)
    if actual != expected:
        raise InputError(f"{uri}: sha256 {actual} does not match {uri}.sha256 ({expected}).")


def _key(uri: str, info: pafs.FileInfo) -> str:
    return hashlib.sha256(f"{uri}|{info.size}|{info.mtime_ns}".encode()).hexdigest()[:24]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock between processes of this node (workers fetching the same file)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
