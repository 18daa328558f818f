"""jobs.manifest over WebDataset / img2dataset tars: a row per image member, ids from the keys,
the img2dataset Parquet joined on ``key``, tars read once each, uris resolved as files are."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tar_fixtures import I2D_KEYS, PLAIN_TAR, Reads, webdataset_folder, write_tar

import schemas
from jobs import manifest as manifest_job
from pipeline.formats.tars import split_member, webdataset_key
from pipeline.planning.manifest import open_manifest, read_range, row_uri


def make(capsys, *args) -> tuple[int, str]:
    code = manifest_job.main([str(a) for a in args])
    return code, capsys.readouterr().out


def table_of(path: Path) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        schemas.validate(row, "manifest_row")
    return rows


@pytest.fixture
def folder(tmp_path):
    return webdataset_folder(tmp_path / "data")


def test_webdataset_keys():
    assert webdataset_key("sub.dir/000001.jpg") == ("sub.dir/000001", "jpg")
    assert webdataset_key("a.b/c.d/k.seg.png") == ("a.b/c.d/k", "seg.png")
    assert webdataset_key("./000001.jpg") == ("000001", "jpg")
    assert webdataset_key("noext") == ("noext", "")
    assert split_member("s3://b/x.tar.d/y.tar#a#b.jpg") == ("s3://b/x.tar.d/y.tar", "a#b.jpg")
    assert split_member("/data/a#b.jpg") is None


def test_a_folder_of_tars_gives_a_row_per_image_member(folder, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    code, stdout = make(capsys, folder.root, "--output", out)
    assert code == 0, stdout
    rows = table_of(out)
    by_id = {r["image_id"]: r for r in rows}
    expected = {
        "plain/a.png",
        *PLAIN_TAR.values(),
        *(f"shards/00001/{k}" for k, s in I2D_KEYS.items() if s != "failed_to_resize"),
    }
    assert [r["image_id"] for r in rows] == sorted(expected)  # sorted, tar rows contiguous
    assert by_id["plain/a.png"]["uri"] == str(folder.root / "plain" / "a.png")
    assert by_id["plain/a.png"]["key"] is None and by_id["plain/a.png"]["tar_offset"] is None
    for member, image_id in PLAIN_TAR.items():
        row = by_id[image_id]
        assert row["uri"] == f"{folder.tar('00000.tar')}#{member}"
        assert row["key"] == webdataset_key(member)[0]
        assert row["tar_offset"] == folder.offsets["00000.tar"][member]
        assert row["url"] is None and row["status"] is None  # no Parquet beside this tar
    assert by_id["shards/00000/sub.dir/000001"]["key"] == "sub.dir/000001"
    assert by_id["shards/00000/000003.seg.png"]["key"] == "000003"
    # every uri reads back the image's own bytes
    for row in rows:
        member = split_member(row["uri"])
        if member is None:
            data = Path(row["uri"]).read_bytes()
        else:
            with tarfile.open(member[0]) as archive:
                data = archive.extractfile(member[1]).read()  # type: ignore[union-attr]
        assert data == folder.data[row["image_id"]], row["image_id"]
    assert (  # the Parquet beside its tar is not skipped, its _stats.json is
        "skipped 15 hidden or non-image file(s) (.json: 1, .json (in a .tar): 6, "
        ".txt (in a .tar): 6, hidden (in a .tar): 1, no extension (in a .tar): 1)"
    ) in stdout, stdout
    assert "left out 2 img2dataset row(s) whose status is not success (1 of them with an " in (
        stdout
    )


def test_the_img2dataset_parquet_joins_on_key(folder, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert make(capsys, folder.root, "--output", out)[0] == 0
    rows = {r["image_id"]: r for r in table_of(out)}
    parquet = {r["key"]: r for r in pq.read_table(folder.tar("00001.parquet")).to_pylist()}
    for key, status in I2D_KEYS.items():
        image_id = f"shards/00001/{key}"
        if status == "failed_to_resize":  # its image is in the tar, and left out
            assert image_id not in rows
            continue
        row = rows[image_id]
        assert row["key"] == key and row["uri"].endswith(f"00001.tar#{key}.jpg")
        source = parquet.get(key)
        if source is None:  # no Parquet row: the columns are null
            assert row["url"] is row["caption"] is row["width"] is None
            continue
        assert (row["url"], row["caption"], row["status"]) == (
            source["url"],
            source["caption"],
            "success",
        )
        assert (row["width"], row["height"]) == (source["width"], source["height"])
        assert row["img2dataset_sha256"] == source["sha256"] and row.get("sha256") is None
    schema = pq.read_schema(out)
    assert schema.names[:6] == ["image_id", "uri", "width", "height", "key", "tar_offset"]
    assert schema.field("caption").type == pa.string()
    # jobs.label's reader takes the columns it needs, the offsets among them
    manifest = open_manifest(str(out))
    table = read_range(manifest.files[0].uri, 0, manifest.rows)
    assert "tar_offset" in table.column_names and "caption" not in table.column_names


def test_probe_reads_each_tar_once_and_fills_sizes_and_hashes(
    folder, tmp_path, capsys, monkeypatch
):
    bad = folder.tar("00000.tar")
    raw = bytearray(bad.read_bytes())
    at = folder.offsets["00000.tar"]["sub.dir/000002.jpg"] + 512  # the member's data
    raw[at : at + 200] = b"\0" * 200  # not an image any more
    bad.write_bytes(bytes(raw))
    reads = Reads(monkeypatch)
    out = tmp_path / "m.parquet"
    code, _ = make(capsys, folder.root, "--output", out, "--probe", "--sha256")
    assert code == 0
    rows = {r["image_id"]: r for r in table_of(out)}
    broken = "shards/00000/sub.dir/000002"
    assert broken not in rows and len(rows) == len(folder.data) - 1
    for image_id, row in rows.items():
        data = folder.data[image_id]
        assert row["sha256"] == hashlib.sha256(data).hexdigest()
        assert (row["width"], row["height"]) == Image.open(io.BytesIO(data)).size
    [failure] = [
        json.loads(line) for line in Path(f"{out}.unreadable.jsonl").read_text().splitlines()
    ]
    schemas.validate(failure, "failure")
    assert failure["image_id"] == broken and failure["uri"].endswith("#sub.dir/000002.jpg")
    # listing read each tar (one open); probing again, from the first member wanted
    for tar in ("00000.tar", "00001.tar"):
        assert reads.count("open", str(folder.tar(tar))) == 2, tar
        assert reads.count("read", str(folder.tar(tar))) == 2, tar  # small tars: one chunk


def test_a_single_tar_a_pattern_and_an_s3_prefix_spell_ids_alike(folder, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    assert make(capsys, folder.tar("00000.tar"), "--output", out)[0] == 0
    ids = {r["image_id"] for r in table_of(out)}
    assert ids == {i.removeprefix("shards/") for i in PLAIN_TAR.values()}
    assert make(capsys, f"{folder.root}/shards/*.tar", "--output", out)[0] == 0
    rows = table_of(out)
    assert {r["image_id"] for r in rows} >= {i.removeprefix("shards/") for i in PLAIN_TAR.values()}
    assert any(r["caption"] for r in rows)  # the Parquet beside a matched tar is joined


@pytest.mark.slow
def test_an_s3_prefix_of_tars(s3_env, folder, tmp_path, capsys):
    fs = s3_env
    for path in sorted(folder.root.rglob("*")):
        if path.is_file():
            key = f"data/wds/{path.relative_to(folder.root)}"
            with fs.open_output_stream(key) as stream:
                stream.write(path.read_bytes())
    local, remote = tmp_path / "local.parquet", tmp_path / "remote.parquet"
    assert make(capsys, folder.root, "--output", local)[0] == 0
    code, stdout = make(capsys, "s3://data/wds", "--output", remote, "--probe")
    assert code == 0, stdout
    mine, theirs = table_of(local), table_of(remote)
    assert [r["image_id"] for r in mine] == [r["image_id"] for r in theirs]
    for a, b in zip(mine, theirs, strict=True):
        assert b["uri"] == a["uri"].replace(str(folder.root), "s3://data/wds")
        assert (a["key"], a["tar_offset"], a["caption"]) == (
            b["key"],
            b["tar_offset"],
            b["caption"],
        )


def test_relative_member_uris_resolve_their_tar_only(tmp_path):
    manifest = str(tmp_path / "m" / "part-0.parquet")
    uri = "../shards/00000.tar#sub.dir/../odd name#1.jpg"
    assert row_uri(uri, manifest) == f"{tmp_path}/shards/00000.tar#sub.dir/../odd name#1.jpg"
    assert row_uri("x.tar#a.jpg", "s3://b/m/p.parquet") == "s3://b/m/x.tar#a.jpg"
    assert row_uri("s3://b/x.tar#a.jpg", manifest) == "s3://b/x.tar#a.jpg"


def test_truncated_damaged_and_unreadable_tars_are_listed_as_far_as_they_read(tmp_path, capsys):
    members = [(f"{k:03d}.png", Path(__file__).read_bytes()[:3000]) for k in range(6)]
    offsets = write_tar(tmp_path / "d" / "cut.tar", members)
    raw = (tmp_path / "d" / "cut.tar").read_bytes()
    (tmp_path / "d" / "cut.tar").write_bytes(raw[: offsets["003.png"] + 512 + 100])
    offsets = write_tar(tmp_path / "d" / "bad.tar", members)
    raw = bytearray((tmp_path / "d" / "bad.tar").read_bytes())
    raw[offsets["002.png"] + 3] ^= 0xFF  # its name, so its header's checksum fails
    (tmp_path / "d" / "bad.tar").write_bytes(bytes(raw))
    (tmp_path / "d" / "empty.tar").write_bytes(b"")
    out = tmp_path / "m.parquet"
    code, stdout = make(capsys, tmp_path / "d", "--output", out)
    assert code == 0, stdout
    ids = [r["image_id"] for r in table_of(out)]
    assert ids == [f"bad/{k:03d}" for k in (0, 1, 3, 4, 5)] + [f"cut/{k:03d}" for k in (0, 1, 2)]
    assert "cut off by the end of a truncated .tar: 1" in stdout
    assert "damaged .tar (unreadable headers skipped): 1" in stdout
    assert "unreadable .tar: 1" in stdout
