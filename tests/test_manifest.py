"""Manifests and plans: validation before any work, descriptors from metadata, resumable plans."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.planning.ids import RangeDigest, digest, row_hashes
from pipeline.planning.manifest import ManifestError, first_uris, open_manifest
from pipeline.planning.plan import plan_shards, read_shard


def write(target, row_group_size=None, **columns):
    pq.write_table(pa.table(columns), target, row_group_size=row_group_size)
    return str(target)


def ids(prefix, n, start=0):
    return [f"{prefix}{i}" for i in range(start, start + n)]


def all_rows(plan):
    return [r for s in plan.shards for r in read_shard(s)]


def test_file_folder_and_glob_list_in_sorted_order(tmp_path):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "b.parquet", image_id=["c", "d"], uri=["c.png", "d.png"])
    write(tmp_path / "m" / "a.parquet", image_id=["a", "b"], uri=["a.png", "b.png"], extra=[1, 2])
    for location in (
        str(tmp_path / "m"),
        str(tmp_path / "m" / "*.parquet"),
        f"file://{tmp_path}/m",
    ):
        manifest = open_manifest(location)
        assert [f.rows for f in manifest.files] == [2, 2]
        rows = all_rows(plan_shards(manifest, 3))
        assert [r.image_id for r in rows] == ["a", "b", "c", "d"]
        assert [r.coco_id for r in rows] == [0, 1, 2, 3]
    # relative uris are taken from the folder of the file that lists them
    expected = [str(tmp_path / "m" / n) for n in ("a.png", "b.png", "c.png")]
    assert first_uris(open_manifest(str(tmp_path / "m")), 3) == expected


def test_plans_of_files_with_row_groups_are_deterministic_and_complete(tmp_path):
    """Shards never cross files; workers read only their rows, from any row group layout."""
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "a.parquet", 3, image_id=ids("a", 10), uri=ids("u", 10), width=[5] * 10)
    write(tmp_path / "m" / "b.parquet", 2, image_id=ids("b", 5), uri=ids("v", 5), width=[6] * 5)
    manifest = open_manifest(str(tmp_path / "m"))
    plan = plan_shards(manifest, 4)
    spans = [(s.file.rsplit("/", 1)[1], s.start, s.count, s.first_id) for s in plan.shards]
    assert spans == [
        ("a.parquet", 0, 4, 0),
        ("a.parquet", 4, 4, 4),
        ("a.parquet", 8, 2, 8),
        ("b.parquet", 0, 4, 10),
        ("b.parquet", 4, 1, 14),
    ]
    assert [s.name for s in plan.shards][:2] == ["shard-000000", "shard-000001"]
    rows = all_rows(plan)
    assert [r.image_id for r in rows] == ids("a", 10) + ids("b", 5)
    assert [r.coco_id for r in rows] == list(range(15))
    assert rows[0].width == 5 and rows[-1].width == 6 and rows[0].height is None
    again = plan_shards(open_manifest(str(tmp_path / "m")), 4)
    assert again == plan  # descriptors and digests, every time
    # the same rows in other row groups make the same plan
    write(tmp_path / "m" / "a.parquet", 7, image_id=ids("a", 10), uri=ids("u", 10), width=[5] * 10)
    assert plan_shards(open_manifest(str(tmp_path / "m")), 4) == plan


def test_a_grown_manifest_keeps_its_shards_and_plans_the_new_rows(tmp_path):
    write(tmp_path / "a.parquet", image_id=ids("a", 6), uri=ids("u", 6))
    first = plan_shards(open_manifest(str(tmp_path / "a.parquet")), 4)
    assert [(s.start, s.count) for s in first.shards] == [(0, 4), (4, 2)]
    write(tmp_path / "a.parquet", image_id=ids("a", 11), uri=ids("u", 11))  # rows appended
    grown = plan_shards(open_manifest(str(tmp_path / "a.parquet")), 4, first.shards, {0, 1})
    assert grown.shards[:2] == first.shards and grown.kept == 2
    assert [(s.index, s.start, s.count, s.first_id) for s in grown.shards[2:]] == [
        (2, 6, 4, 6),
        (3, 10, 1, 10),
    ]
    assert [r.image_id for r in all_rows(grown)] == ids("a", 11)


def test_changed_rows_are_refused_under_finished_shards_only(tmp_path):
    path = write(tmp_path / "a.parquet", image_id=ids("a", 8), uri=ids("u", 8))
    first = plan_shards(open_manifest(path), 4)
    changed = ids("a", 8)
    changed[5] = "z"
    write(tmp_path / "a.parquet", image_id=changed, uri=ids("u", 8))
    with pytest.raises(ManifestError, match=r"1 finished shard.*shard-000001 .*rows 4..8"):
        plan_shards(open_manifest(path), 4, first.shards, {0, 1})
    # shard 1 was not finished: it is planned anew, with a new index and new ids
    replanned = plan_shards(open_manifest(path), 4, first.shards, {0})
    assert replanned.shards[0] == first.shards[0]
    assert [(s.index, s.start, s.first_id) for s in replanned.shards[1:]] == [(2, 4, 8)]
    write(tmp_path / "a.parquet", image_id=ids("a", 3), uri=ids("u", 3))  # rows removed
    with pytest.raises(ManifestError, match="changed since they were labelled"):
        plan_shards(open_manifest(path), 4, first.shards, {0})


def test_a_worker_refuses_rows_that_changed_after_planning(tmp_path):
    path = write(tmp_path / "a.parquet", image_id=ids("a", 4), uri=ids("u", 4))
    plan = plan_shards(open_manifest(path), 4)
    write(tmp_path / "a.parquet", image_id=ids("b", 4), uri=ids("u", 4))
    with pytest.raises(ManifestError, match="changed since the run was planned"):
        read_shard(plan.shards[0])


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"id": ["a"], "uri": ["x"]}, "lacks column.*image_id"),
        ({"image_id": ["a"], "path": ["x"]}, "lacks column.*uri"),
        ({"image_id": [1.5], "uri": ["x"]}, "image_id must be string or integer"),
        ({"image_id": ["a"], "uri": [3]}, "uri must be a string"),
        ({"image_id": ["a"], "uri": ["x"], "width": ["wide"]}, "optional column width"),
        ({"image_id": ["a", None, "c"], "uri": ["x", "y", "z"]}, r"image_id is null in row\(s\) 1"),
        ({"image_id": ["a", "b"], "uri": ["x", None]}, r"uri is null in row\(s\) 1"),
        ({"image_id": ["a", "b", "a", "c", "b"], "uri": list("vwxyz")}, r"repeat.*rows 0, 1, 2, 4"),
        ({"image_id": [7, 8, 7], "uri": list("xyz")}, r"repeat, e.g. \[7\] in rows 0, 2"),
    ],
)
def test_bad_manifests_name_the_problem(tmp_path, columns, match):
    path = write(tmp_path / "m.parquet", **columns)
    with pytest.raises(ManifestError, match=match):
        plan_shards(open_manifest(path), 2)


def test_duplicates_across_files_and_batches_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.planning.manifest.BATCH_ROWS", 7)  # many batches
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "a.parquet", image_id=ids("x", 20), uri=ids("u", 20))
    write(tmp_path / "m" / "b.parquet", image_id=ids("x", 5, start=18), uri=ids("u", 5))
    with pytest.raises(ManifestError, match=r"2 image_id value\(s\) repeat.*rows 18, 19, 20, 21"):
        plan_shards(open_manifest(str(tmp_path / "m")), 8)


def test_missing_unreadable_and_mixed_manifests(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        open_manifest(str(tmp_path / "nope.parquet"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="Cannot read manifest"):
        open_manifest(str(tmp_path / "bad.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no .parquet"):
        open_manifest(str(tmp_path / "empty"))
    (tmp_path / "mixed").mkdir()
    write(tmp_path / "mixed" / "a.parquet", image_id=["a"], uri=["x"])
    write(tmp_path / "mixed" / "b.parquet", image_id=[1], uri=["y"])
    with pytest.raises(ManifestError, match="same image_id type"):
        open_manifest(str(tmp_path / "mixed"))


def test_row_hashes_and_digests_against_an_independent_computation():
    values = ["a", "", "ab", "ba", "é", "a", "x" * 300]
    array = pa.array(values)
    hashes = row_hashes(array)
    assert hashes[0] == hashes[5] and len(set(hashes.tolist())) == 6  # equal ids, equal hashes
    np.testing.assert_array_equal(row_hashes(array.slice(2, 3)), hashes[2:5])  # slices too
    np.testing.assert_array_equal(row_hashes(pa.array([3, -1])), np.array([3, -1]).view(np.uint64))
    # the digest: sha256 over lengths and bytes, whatever the pieces it is fed in
    encoded = [v.encode() for v in values]
    lengths = np.array([len(e) for e in encoded], "<i8").tobytes()
    expected = hashlib.sha256(
        b"string" + hashlib.sha256(lengths).digest() + hashlib.sha256(b"".join(encoded)).digest()
    ).hexdigest()
    assert digest(array) == expected
    pieces = RangeDigest()
    for a, b in ((0, 2), (2, 3), (3, 7)):
        pieces.update(array.slice(a, b - a))
    assert pieces.hexdigest() == expected
    assert digest(pa.array(values[:-1])) != expected
