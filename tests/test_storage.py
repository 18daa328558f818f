"""Atomic writes: a failed write leaves neither a partial file nor a temporary behind."""

from __future__ import annotations

import pytest

from pipeline.formats.storage import Storage


class Boom(Exception):
    pass


def check_atomic(storage: Storage) -> None:
    storage.write_atomic("a/b.json", b"old")
    with pytest.raises(Boom), storage.open_atomic("a/b.json") as stream:
        stream.write(b"new but unfinished")
        raise Boom
    assert storage.read("a/b.json") == b"old"
    with pytest.raises(Boom), storage.open_atomic("a/c.json") as stream:
        stream.write(b"partial")
        raise Boom
    assert not storage.exists("a/c.json")
    assert storage.list("a") == ["a/b.json"]  # no temporaries listed or left
    storage.write_atomic("a/b.json", b"new")
    assert storage.read("a/b.json") == b"new"


def test_local_writes_are_atomic(tmp_path):
    check_atomic(Storage(str(tmp_path / "out")))
    assert [p.name for p in (tmp_path / "out" / "a").iterdir()] == ["b.json"]
