"""Planning in bounded memory: duplicates found out of core (DuckDB spilling under a small
memory limit) and named as before; the same plan as a plain in-memory computation; shards
that never cross a change of tar file; the plan as columns."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.formats.descriptors import Shard
from pipeline.formats.tars import split_member
from pipeline.planning import manifest as manifest_module
from pipeline.planning import repeats
from pipeline.planning.ids import digest
from pipeline.planning.manifest import ManifestError, open_manifest, tar_keys
from pipeline.planning.plan import plan_shards
from pipeline.planning.repeats import HashStore, Scratch
from pipeline.planning.shard_table import ShardTable

TINY = "16MB"  # DuckDB's memory limit here: under what grouping the hashes takes: it spills


def write_files(folder, parts, uris=None, row_group_size=1000):
    """One Parquet file per list of ids in ``parts`` (uris ``<id>.jpg`` unless given)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, part in enumerate(parts):
        column = uris[k] if uris is not None else [f"{i}.jpg" for i in part]
        table = pa.table({"image_id": part, "uri": column})
        pq.write_table(table, folder / f"part-{k:03d}.parquet", row_group_size=row_group_size)
    return open_manifest(str(folder))


def reference_plan(folder, size, previous=(), finished=()):
    """The plan, computed the plain way from every row in memory: each file cut into runs of
    ``size`` around the previous shards whose rows are unchanged; new shards numbered after
    the previous ones, in row order. (No tar members here.)"""
    files = sorted(str(p) for p in folder.glob("*.parquet"))
    ids = {f: pq.read_table(f, columns=["image_id"])["image_id"] for f in files}
    keep = [
        s
        for s in previous
        if s.file in ids
        and s.start + s.count <= len(ids[s.file])
        and digest(ids[s.file].slice(s.start, s.count).combine_chunks()) == s.digest
    ]
    index = max((s.index + 1 for s in previous), default=0)
    first = max((s.first_id + s.count for s in previous), default=0)
    shards = list(keep)
    for f in files:
        row = 0
        stops = sorted((s for s in keep if s.file == f), key=lambda s: s.start)
        for stop in [*stops, None]:
            end = len(ids[f]) if stop is None else stop.start
            for a in range(row, end, size):
                n = min(size, end - a)
                d = digest(ids[f].slice(a, n).combine_chunks())
                shards.append(Shard(index, f, a, n, first, d))
                index, first = index + 1, first + n
            if stop is not None:
                row = stop.start + stop.count
    return sorted(shards, key=lambda s: s.index)


@pytest.fixture
def small_batches(monkeypatch):
    """Batches of 1000 rows, so ranges, tars and duplicates fall across batch edges."""
    monkeypatch.setattr(manifest_module, "BATCH_ROWS", 1000)


def test_the_plan_is_the_in_memory_plan_fresh_and_resumed(tmp_path, small_batches):
    folder = tmp_path / "m"
    ids = [f"img_{i:07d}" for i in range(23_456)]
    write_files(folder, [ids[:10_000], ids[10_000:10_001], ids[10_001:]], row_group_size=777)
    scratch = Scratch(memory_limit=TINY, folder=str(tmp_path))
    manifest = open_manifest(str(folder))
    first = plan_shards(manifest, 300, scratch=scratch)
    assert list(first.shards) == reference_plan(folder, 300)
    assert first.kept == 0 and first.images == len(ids) and first.rows == len(ids)
    # The manifest grows (a file longer, a new file), and one unfinished shard's rows change.
    grown = [f"new_{i}" for i in range(1500)]
    changed = ids[10_001:]
    changed[400] = "changed"
    write_files(folder, [ids[:10_000] + grown, ids[10_000:10_001], changed, ["z1", "z2"]])
    manifest = open_manifest(str(folder))
    previous = list(first.shards)
    done = [s.index for s in previous if s.file.endswith("part-000.parquet")]
    again = plan_shards(manifest, 300, previous, done, scratch=scratch)
    expected = reference_plan(folder, 300, previous, done)
    assert list(again.shards) == expected
    assert again.kept == len(previous) - 1  # all but the changed one
    assert not any(f.startswith("gclip-plan-") for f in os.listdir(tmp_path))  # scratch gone


def test_duplicates_across_files_and_partitions_are_named_while_spilling(tmp_path):
    n = 600_000
    ids = [f"img_{i:07d}" for i in range(n)]
    ids[550_123] = ids[17]  # in another file, far apart
    ids[299_999] = ids[200_000]  # across a file edge
    folder = tmp_path / "m"
    manifest = write_files(folder, [ids[:200_000], ids[200_000:300_000], ids[300_000:]])
    spilled = []

    class Watched(HashStore):  # the check's store: did DuckDB go out of core to finish?
        def repeated(self, table, skip=0):
            found = super().repeated(table, skip)
            spilled.append(os.path.isdir(os.path.join(self.folder, "spill")))
            return found

    scratch = Scratch(memory_limit=TINY, threads=1, folder=str(tmp_path))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.planning.plan.HashStore", Watched)
        with pytest.raises(ManifestError) as err:
            plan_shards(manifest, 256, scratch=scratch)
    assert str(err.value) == (
        f"{folder}: 2 image_id value(s) repeat, e.g. ['img_0000017', 'img_0200000'] in rows "
        "17, 200000, 299999, 550123; image ids must be unique."
    )
    assert spilled[0]  # DuckDB made its spill folder: the limit forced it out of core
    assert not any(f.startswith("gclip-plan-") for f in os.listdir(tmp_path))


def test_many_false_label_suspects_page_to_the_real_collision(tmp_path, monkeypatch):
    """Ids whose label keys match but names differ (hashed names) are suspects only; a real
    collision after more of them than a page of suspects is still found and named."""
    monkeypatch.setattr(repeats, "SUSPECTS", 2)
    unsafe = [f"../{i}.jpg" for i in range(3)] + [f"../{i}.png" for i in range(3)]
    ids = [*unsafe, "a.jpg", "b.jpg", "a.png"]
    manifest = write_files(tmp_path / "m", [ids[:4], ids[4:]])
    with pytest.raises(ManifestError, match=r"1 label file name\(s\).*labels/a.png for rows 6, 8"):
        plan_shards(manifest, 2, label_files=True, scratch=Scratch(memory_limit=TINY))


def test_label_file_and_folder_clashes_across_files(tmp_path):
    ids = ["x.jpg", "other.jpg", "x.png/y.jpg"]
    manifest = write_files(tmp_path / "m", [ids[:2], ids[2:]])
    with pytest.raises(ManifestError, match="labels/x.png is row 0's label file") as err:
        plan_shards(manifest, 2, label_files=True)
    assert "a folder of row 2's (image_id 'x.png/y.jpg')" in str(err.value)
    assert plan_shards(manifest, 2).images == 3  # no label maps: no clash


def test_shards_never_cross_a_change_of_tar(tmp_path, small_batches):
    members = (
        [f"d/00001.tar#{k:03d}.jpg" for k in range(1003)]  # across a batch edge
        + [f"d/00002.tar#a/{k}.jpg" for k in range(3)]
        + [f"plain/{k}#x.jpg" for k in range(5)]  # '#' in a plain name: not a tar
        + [f"s3://b/00003.tar#{k}.jpg" for k in range(2)]
        + ["s3://b/00003.tar#again.tar#inner.jpg"]  # the first .tar# names the tar
    )
    ids = [f"t{k:05d}" for k in range(len(members))]
    manifest = write_files(tmp_path / "m", [ids], uris=[members])
    spans = [(s.start, s.count) for s in plan_shards(manifest, 400).shards]
    assert spans == [(0, 400), (400, 400), (800, 203), (1003, 3), (1006, 5), (1011, 3)]
    for shard in plan_shards(manifest, 400).shards:  # each shard: one tar, or none
        tars = {
            split_member(u) and split_member(u)[0] for u in members[shard.start :][: shard.count]
        }
        assert len(tars) == 1
    assert tar_keys(pa.array(["a.jpg", "b#c.jpg"])) is None


def test_manifests_without_tar_members_plan_as_fixed_ranges(tmp_path):
    ids = [f"i{k}" for k in range(10)]
    uris = [f"a#{k}.jpg" for k in range(10)]
    manifest = write_files(tmp_path / "m", [ids], uris=[uris])
    assert [(s.start, s.count) for s in plan_shards(manifest, 4).shards] == [(0, 4), (4, 4), (8, 2)]


def test_the_shard_table_reads_as_the_shards_it_holds():
    shards = [Shard(k * 2, f"f{k % 3}", k, 1, k, f"{k:064x}") for k in (5, 1, 3, 0)]
    table = ShardTable.from_shards(shards, ["f0"])
    ordered = sorted(shards, key=lambda s: s.index)
    assert list(table) == ordered == [table[k] for k in range(len(table))]
    assert table == ordered and table[1:3] == ordered[1:3] and len(table) == 4
    assert table.by_index(6) == ordered[2] and table.images == 4
    assert table.positions(np.array([2, 4, 10])).tolist() == [1, -1, 3]
    with pytest.raises(KeyError):
        table.by_index(4)
    assert list(table.take(table.file == table.files.index("f1"))) == [ordered[1]]
