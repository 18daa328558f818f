"""Manifests: validation before any work, and deterministic shard plans."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.planning.manifest import ManifestError, plan_shards, read_manifest


def write(target, **columns):
    pq.write_table(pa.table(columns), target)
    return str(target)


def test_file_folder_and_glob_read_in_sorted_order(tmp_path):
    (tmp_path / "m").mkdir()
    write(tmp_path / "m" / "b.parquet", image_id=["c", "d"], uri=["c.png", "d.png"])
    write(tmp_path / "m" / "a.parquet", image_id=["a", "b"], uri=["a.png", "b.png"], extra=[1, 2])
    for location in (
        str(tmp_path / "m"),
        str(tmp_path / "m" / "*.parquet"),
        f"file://{tmp_path}/m",
    ):
        table = read_manifest(location)
        assert table["image_id"].to_pylist() == ["a", "b", "c", "d"]
    one = read_manifest(str(tmp_path / "m" / "a.parquet"))
    assert one["extra"].to_pylist() == [1, 2]  # passthrough columns are kept


def test_plan_is_deterministic_and_complete(tmp_path):
    path = write(
        tmp_path / "m.parquet",
        image_id=list(range(10)),
        uri=[f"{i}.png" for i in range(10)],
        width=[5] * 10,
    )
    shards = plan_shards(read_manifest(path), 4)
    assert [len(s.records) for s in shards] == [4, 4, 2]
    assert [s.name for s in shards] == ["shard-000000", "shard-000001", "shard-000002"]
    assert [r.index for s in shards for r in s.records] == list(range(10))
    assert shards[0].records[0].width == 5 and shards[0].records[0].height is None
    assert plan_shards(read_manifest(path), 4) == shards


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
    ],
)
def test_bad_manifests_name_the_problem(tmp_path, columns, match):
    path = write(tmp_path / "m.parquet", **columns)
    with pytest.raises(ManifestError, match=match):
        read_manifest(path)


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(ManifestError, match="does not exist"):
        read_manifest(str(tmp_path / "nope.parquet"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="Cannot read manifest"):
        read_manifest(str(tmp_path / "bad.parquet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="no .parquet"):
        read_manifest(str(tmp_path / "empty"))
