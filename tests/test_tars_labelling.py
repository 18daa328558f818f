"""jobs.label over tar members: the same labels as the same images as files, a few large reads
per shard and tar, and damaged or cut-off members recorded as failures of those images only."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from tar_fixtures import Reads, image_bytes, webdataset_folder, write_tar

import schemas
from jobs import manifest as manifest_job
from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.formats import tars
from pipeline.formats.tars import TarTruncatedError, read_members

SHARD_SIZE = 3


@pytest.fixture
def folder(tmp_path):
    folder = webdataset_folder(tmp_path / "data")
    (tmp_path / "vocab.txt").write_text("dark\nbright\n")
    assert manifest_job.main([str(folder.root), "--output", str(tmp_path / "tars.parquet")]) == 0
    return folder


def label(tmp_path, manifest: str, output: str) -> dict:
    config = RunConfig.from_settings(
        manifest=manifest,
        vocabulary=str(tmp_path / "vocab.txt"),
        output=str(tmp_path / output),
        shard_size=SHARD_SIZE,
        pretrained="none",
    )
    run_labelling(config, LocalBackend(BrightnessSegmenter()))
    coco = json.loads((tmp_path / output / "annotations.json").read_text())
    schemas.validate(coco, "annotations")
    return coco


def labels_by_id(coco: dict) -> dict:
    """image_id -> (height, width, its annotations without ids), from a COCO file."""
    by_coco_id = {image["id"]: image for image in coco["images"]}
    out = {i["image_id"]: (i["height"], i["width"], []) for i in coco["images"]}
    for ann in coco["annotations"]:
        kept = {k: v for k, v in ann.items() if k not in ("id", "image_id")}
        out[by_coco_id[ann["image_id"]]["image_id"]][2].append(kept)
    return out


def failures_of(tmp_path, output: str) -> dict:
    path = tmp_path / output / "failures.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    failures = [json.loads(line) for line in lines]
    for failure in failures:
        schemas.validate(failure, "failure")
    return {f["image_id"]: f for f in failures}


def mark_shards(reads: Reads, monkeypatch) -> list:
    """Tag each read with the shard it is for (the first COCO id of its records); the
    records each shard read come back in the list returned."""
    real, seen = tars.record_bytes, []

    def record_bytes(records):
        reads.shard = records[0].coco_id if records else -1
        seen.extend(records)
        yield from real(records)

    monkeypatch.setattr(tars, "record_bytes", record_bytes)
    return seen


def test_tar_members_label_as_the_same_images_as_files(folder, tmp_path, monkeypatch):
    # the tar manifest with uris relative to its folder, as a manifest moved with its tars is
    table = pq.read_table(tmp_path / "tars.parquet")
    relative = [u.replace(f"{folder.root}/", "") for u in table["uri"].to_pylist()]
    table = table.set_column(table.schema.get_field_index("uri"), "uri", pa.array(relative))
    pq.write_table(table, folder.root / "relative.parquet")
    # the same images as files, under the same ids
    (tmp_path / "files").mkdir()
    ids, uris = table["image_id"].to_pylist(), []
    for k, image_id in enumerate(ids):
        path = tmp_path / "files" / f"{k}.img"
        path.write_bytes(folder.data[image_id])
        uris.append(str(path))
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), tmp_path / "files.parquet")
    reads = Reads(monkeypatch)
    records = mark_shards(reads, monkeypatch)
    from_tars = label(tmp_path, str(folder.root / "relative.parquet"), "out-tars")
    from_files = label(tmp_path, str(tmp_path / "files.parquet"), "out-files")
    assert failures_of(tmp_path, "out-tars") == failures_of(tmp_path, "out-files") == {}
    assert labels_by_id(from_tars) == labels_by_id(from_files)
    assert len(from_tars["images"]) == len(ids) == 9 and from_tars["annotations"]
    # each shard read each of its tars once, in one ranged read (the tars are small), and
    # no shard mixed two tars (the planner cuts shards at each change of tar)
    shards = {s for s, *_ in reads.events}
    assert len(shards) == 4  # 00000.tar's 4 rows and 00001.tar's 4 in 2 shards each
    for shard in shards:
        opened = {t for s, kind, t, _ in reads.events if s == shard and kind == "open"}
        assert len(opened) == 1, reads.events
        assert reads.count("open", shard=shard) == reads.count("read", shard=shard) == 1
    # the workers' records carry the offsets: a shard's read starts at its first member
    offsets = {
        f"shards/{t.removesuffix('.tar')}/{m}": o
        for t, f in folder.offsets.items()
        for m, o in f.items()
    }
    for rec in records[: len(ids)]:
        member = tars.split_member(rec.uri)
        if member is not None:
            name = f"shards/{member[0].rsplit('/', 1)[1].removesuffix('.tar')}/{member[1]}"
            assert rec.tar_offset == offsets[name], rec


def test_a_damaged_member_and_a_truncated_tar_fail_only_their_images(folder, tmp_path):
    plain, i2d = folder.tar("00000.tar"), folder.tar("00001.tar")
    raw = bytearray(plain.read_bytes())
    offsets = folder.offsets["00000.tar"]
    raw[offsets["sub.dir/000001.png"] + 5] ^= 0xFF  # its header's name: the checksum fails
    data = offsets["000003.png"] + 512
    raw[data : data + 16] = b"\0" * 16  # its bytes are no image any more
    plain.write_bytes(bytes(raw))
    cut = folder.offsets["00001.tar"]["000010001.jpg"] + 512 + 100  # inside its data
    i2d.write_bytes(i2d.read_bytes()[:cut])
    coco = label(tmp_path, str(tmp_path / "tars.parquet"), "out")
    failures = failures_of(tmp_path, "out")
    assert {k: f["error"] for k, f in failures.items()} == {
        "shards/00000/sub.dir/000001": "FileNotFoundError",
        "shards/00000/000003.png": "ImageDecodeError",
        "shards/00001/000010001": "TarTruncatedError",
        "shards/00001/000010003": "TarTruncatedError",
        "shards/00001/000010004": "TarTruncatedError",
    }
    assert failures["shards/00001/000010001"]["uri"].endswith("00001.tar#000010001.jpg")
    labelled = {image["image_id"] for image in coco["images"]}
    assert labelled == {
        "plain/a.png",
        "shards/00000/000003.seg.png",
        "shards/00000/sub.dir/000002",
        "shards/00001/000010000",
    }


def test_a_read_starts_at_the_first_member_wanted_and_stops_after_the_last(tmp_path, monkeypatch):
    members = [(f"{k:04d}.png", image_bytes(k) * 20) for k in range(40)]
    offsets = write_tar(tmp_path / "t.tar", members)
    size = (tmp_path / "t.tar").stat().st_size
    monkeypatch.setattr(tars, "CHUNK_BYTES", 4096)
    reads = Reads(monkeypatch)
    wanted = [f"{k:04d}.png" for k in (21, 20, 24)]
    got = dict(read_members(str(tmp_path / "t.tar"), wanted, offsets))
    assert got == {name: dict(members)[name] for name in wanted}
    span = offsets["0025.png"] - offsets["0020.png"]
    read = sum(n for _, kind, _, n in reads.events if kind == "read")
    assert reads.count("open") == 1 and span <= read <= span + 3 * 4096 < size
    assert reads.count("read") <= span // 4096 + 4
    # without offsets (a manifest made elsewhere): from the start, and no further than needed
    reads.events.clear()
    assert dict(read_members(str(tmp_path / "t.tar"), wanted)) == got
    read = sum(n for _, kind, _, n in reads.events if kind == "read")
    assert offsets["0025.png"] <= read <= offsets["0025.png"] + 3 * 4096 < size


def test_stale_offsets_cost_one_more_read_not_the_images(tmp_path, monkeypatch):
    members = [(f"{k}.png", image_bytes(k)) for k in range(6)]
    offsets = write_tar(tmp_path / "t.tar", members)
    write_tar(tmp_path / "t.tar", [("new.png", image_bytes(9) * 3), *members])  # rewritten
    reads = Reads(monkeypatch)
    got = dict(read_members(str(tmp_path / "t.tar"), ["3.png", "4.png"], offsets))
    assert got == {"3.png": image_bytes(3), "4.png": image_bytes(4)}
    assert reads.count("open") == 2


def test_what_cannot_be_read_is_an_error_per_member(tmp_path):
    members = [(f"{k}.png", image_bytes(k)) for k in range(4)]
    offsets = write_tar(tmp_path / "t.tar", members)
    raw = (tmp_path / "t.tar").read_bytes()
    (tmp_path / "t.tar").write_bytes(raw[: offsets["2.png"] + 512 + 10])
    got = dict(read_members(str(tmp_path / "t.tar"), ["0.png", "2.png", "3.png", "x.png"]))
    assert got["0.png"] == image_bytes(0)
    assert all(isinstance(got[n], TarTruncatedError) for n in ("2.png", "3.png", "x.png"))
    missing = dict(read_members(str(tmp_path / "none.tar"), ["0.png"]))
    assert isinstance(missing["0.png"], FileNotFoundError)
