"""Label files keep their image's relative path; nothing escapes labels/; shared names refused."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.formats.layout import label_file_name, label_name_keys, label_path
from pipeline.planning.manifest import ManifestError, open_manifest
from pipeline.planning.plan import plan_shards


@pytest.mark.parametrize(
    ("image_id", "name"),
    [
        ("a", "a.png"),
        ("a.jpg", "a.png"),
        ("nested/deeper/d.JPEG", "nested/deeper/d.png"),
        ("my photo ünï 猫.webp", "my photo ünï 猫.png"),
        ("scan.tiff", "scan.png"),
        ("archive.tar", "archive.tar.png"),  # not an image suffix: kept
        ("a:b?c.png", "a_b_c.png"),
        ("tab\there.jpg", "tab_here.png"),
        (".hidden.jpg", ".hidden.png"),
        (1234, "1234.png"),
    ],
)
def test_label_files_keep_the_relative_path(image_id, name):
    assert label_file_name(image_id) == name
    assert label_path(image_id) == f"labels/{name}"


@pytest.mark.parametrize(
    "image_id", ["../up.jpg", "a/../../b.png", "/abs/x.jpg", "a//b.jpg", "./a.jpg", "", "x/" * 600]
)
def test_ids_that_cannot_be_made_safe_get_a_hashed_name(image_id):
    name = label_file_name(image_id)
    assert name.startswith("_") and "/" not in name and name.endswith(".png") and len(name) == 29
    assert label_file_name(image_id + "y") != name


def test_vectorised_keys_agree_with_the_names():
    ids = ["a.jpg", "A.JPG", "a.png", "n/b c.Tif", "x:y", "x_y", "plain"]
    keys = label_name_keys(pa.array(ids)).to_pylist()
    for i, left in enumerate(ids):
        for j, right in enumerate(ids):
            if label_file_name(left) == label_file_name(right):
                assert keys[i] == keys[j], (left, right)


def write_manifest(path, ids):
    pq.write_table(pa.table({"image_id": ids, "uri": [f"/d/{i}" for i in range(len(ids))]}), path)
    return open_manifest(str(path))


def test_ids_sharing_a_label_file_are_refused_when_label_maps_are_written(tmp_path):
    ids = ["a.jpg", "b.jpg", "sub/c.png", "d.jpg", "a.png", "x:y.jpg", "x_y.png"]
    manifest = write_manifest(tmp_path / "m.parquet", ids)
    assert plan_shards(manifest, 3).images == 7  # no label files: distinct ids suffice
    with pytest.raises(ManifestError) as err:
        plan_shards(manifest, 3, label_files=True)
    message = str(err.value)
    assert "2 label file name(s)" in message and "labels/a.png" in message
    assert "rows 0, 4, 5, 6" in message and "--png-labels" in message
    # Hashed names never collide; integer ids name distinct files.
    safe = write_manifest(tmp_path / "ok.parquet", ["../a.jpg", "../a.png", "a.jpg"])
    assert plan_shards(safe, 2, label_files=True).images == 3
    pq.write_table(pa.table({"image_id": [1, 2], "uri": ["/1", "/2"]}), tmp_path / "i.parquet")
    assert plan_shards(open_manifest(str(tmp_path / "i.parquet")), 2, label_files=True).images == 2
