"""Manifest inputs refused or resolved at planning: relative uris, empty manifests and ids,
folders of images given as manifests, label paths that are both a file and a folder."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.planning.ids import prefix_hashes, prefixes_before, row_hashes
from pipeline.planning.manifest import ManifestError, first_uris, open_manifest, row_uri
from pipeline.planning.plan import plan_shards, read_shard


def write(path, **columns):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_relative_uris_resolve_against_the_manifest_folder_not_the_working_one(
    tmp_path, monkeypatch
):
    for name in ("data/images/a.png", "data/images/b.png", "other/c.png", "abs/d.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"png")
    untouched = [str(tmp_path / "abs/d.png"), "s3://bucket/k.png", "https://example.org/x.png"]
    uris = ["images/a.png", "./images/b.png", "../other/c.png", *untouched]
    path = write(tmp_path / "data/manifest.parquet", image_id=list("abcdef"), uri=uris)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    manifest = open_manifest(path)
    plan = plan_shards(manifest, 3)
    records = [r for s in plan.shards for r in read_shard(s)]
    local = [str(tmp_path / n) for n in ("data/images/a.png", "data/images/b.png", "other/c.png")]
    assert [r.uri for r in records] == [*local, *untouched]
    assert all(os.path.isfile(r.uri) for r in records[:4])
    assert first_uris(manifest, 4) == [*local, untouched[0]]  # calibration reads the same files
    # plans cover ids only: the same from any working directory, and for a manifest moved
    monkeypatch.chdir(tmp_path)
    assert plan_shards(open_manifest("data/manifest.parquet"), 3) == plan


def test_file_uris_and_s3_manifests_keep_their_scheme():
    assert row_uri("file:///x/a.png", "/m/manifest.parquet") == "file:///x/a.png"
    assert row_uri("images/a.png", "s3://bucket/m/manifest.parquet") == "s3://bucket/m/images/a.png"
    assert row_uri("../a.png", "s3://bucket/m/sub/part.parquet") == "s3://bucket/m/a.png"
    assert row_uri("gs://b/a.png", "s3://bucket/m.parquet") == "gs://b/a.png"


def test_the_bundled_demo_manifest_reads_its_images_from_any_folder(tmp_path, monkeypatch):
    demo = Path(__file__).resolve().parents[1] / "demo" / "manifest.parquet"
    monkeypatch.chdir(tmp_path)
    plan = plan_shards(open_manifest(str(demo)), 100)
    records = read_shard(plan.shards[0])
    assert records and all(Path(r.uri).is_file() for r in records), records[0].uri


def test_an_empty_manifest_is_refused_when_opened(tmp_path):
    path = write(
        tmp_path / "m.parquet", image_id=pa.array([], pa.string()), uri=pa.array([], pa.string())
    )
    with pytest.raises(ManifestError, match="holds no rows: nothing to label"):
        open_manifest(path)


def test_an_empty_manifest_exits_2_before_any_work(tmp_path, capsys):
    from jobs import label as label_job

    path = write(
        tmp_path / "m.parquet", image_id=pa.array([], pa.string()), uri=pa.array([], pa.string())
    )
    (tmp_path / "v.txt").write_text("sky\nroad\n", encoding="utf-8")
    args = ["--manifest", path, "--vocabulary", str(tmp_path / "v.txt")]
    assert label_job.main([*args, "--output", str(tmp_path / "run")]) == 2
    assert "holds no rows: nothing to label" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        (
            {"image_id": ["a", "", "c"], "uri": list("xyz")},
            r"image_id is empty \(''\) in row\(s\) 1;",
        ),
        ({"image_id": ["a", "b"], "uri": ["x", ""]}, r"uri is empty \(''\) in row\(s\) 1;"),
    ],
)
def test_empty_strings_are_refused_with_their_rows(tmp_path, columns, match):
    with pytest.raises(ManifestError, match=match):
        plan_shards(open_manifest(write(tmp_path / "m.parquet", **columns)), 2)


def test_a_folder_or_glob_of_images_points_at_jobs_manifest(tmp_path):
    (tmp_path / "photos" / "sub").mkdir(parents=True)
    (tmp_path / "photos" / "a.jpg").write_bytes(b"jpg")
    (tmp_path / "photos" / "sub" / "b.PNG").write_bytes(b"png")
    fix = "python -m jobs.manifest {} --output M.parquet`, then pass --manifest M.parquet"
    for location, images in ((str(tmp_path / "photos"), 2), (str(tmp_path / "photos/*.jpg"), 1)):
        with pytest.raises(ManifestError) as err:
            open_manifest(location)
        message = str(err.value)
        assert f"holds {images} image file(s) and no .parquet file: it is not a manifest" in message
        assert fix.format(shlex.quote(location)) in message
    with pytest.raises(ManifestError, match="is an image: it is not a manifest") as err:
        open_manifest(str(tmp_path / "photos" / "a.jpg"))
    assert "python -m jobs.manifest" in str(err.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError) as err:  # nothing to list: no such advice
        open_manifest(str(tmp_path / "empty"))
    assert "jobs.manifest" not in str(err.value)


def test_a_label_file_that_is_another_ids_folder_is_refused(tmp_path):
    ids = ["b.jpg", "x.jpg", "a.png/c.jpg", "x.png/y.jpg", "x.png/z/w.jpg", "a.jpg", "q.png/r"]
    path = write(tmp_path / "m.parquet", image_id=ids, uri=[f"/d/{i}" for i in range(len(ids))])
    manifest = open_manifest(path)
    assert plan_shards(manifest, 3).images == len(ids)  # without label maps: distinct ids suffice
    with pytest.raises(ManifestError, match="both a file and a folder") as err:
        plan_shards(manifest, 3, label_files=True)
    message = str(err.value)
    assert "labels/x.png is row 1's label file (image_id 'x.jpg')" in message
    assert "a folder of row 3's (image_id 'x.png/y.jpg')" in message
    assert "labels/a.png is row 5's label file (image_id 'a.jpg')" in message
    assert "'q.png/r'" not in message and "--png-labels" in message
    # no clash: a folder of a hashed name ("//" cannot be kept), or of another case or name
    safe = ["x.jpg", "x.png//y.jpg", "x.PNG/a.jpg", "x.jpg.png/b.jpg", "../x.png/c.jpg"]
    path = write(tmp_path / "ok.parquet", image_id=safe, uri=[f"/d/{i}" for i in range(5)])
    assert plan_shards(open_manifest(path), 2, label_files=True).images == 5


def test_folder_prefix_hashes_equal_the_hashes_of_the_prefixes():
    ids = pa.array(["", "a.png/b", "x.png/.png/y", "z", "a.pn", "g/c", ".png/"]).slice(0, 7)
    rows, lengths = prefixes_before(ids, b".png/")
    values = ids.to_pylist()
    assert list(zip(rows.tolist(), lengths.tolist(), strict=True)) == [
        (1, 1),
        (2, 1),
        (2, 6),
        (6, 0),
    ]
    prefixes = pa.array(
        [values[r].encode()[:n].decode() for r, n in zip(rows, lengths, strict=True)]
    )
    np.testing.assert_array_equal(prefix_hashes(ids, rows, lengths), row_hashes(prefixes))
    sliced = ids.slice(2, 3)  # a slice's offsets start inside the buffer
    rows, lengths = prefixes_before(sliced, b".png/")
    assert rows.tolist() == [0, 0]
    np.testing.assert_array_equal(
        prefix_hashes(sliced, rows, lengths), row_hashes(pa.array(["x", "x.png/"]))
    )
