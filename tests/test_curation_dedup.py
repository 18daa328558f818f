"""jobs.dedup: planted re-encoded copies found (demo model), recall of the IVF index against
the exact one, deterministic groups, the schema, and a keep-one manifest jobs.label labels."""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from curation_fixtures import label_images, unit_rows, write_embeddings
from fakes import BrightnessSegmenter
from PIL import Image

import jobs.dedup
import schemas
from gclip.demo_world import generate_scene
from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.curation import DedupSettings, find_duplicates, write_keep_manifest

# The demo model on these scenes: distinct ones at cosine -0.01 median, 0.93 at the 99th
# percentile, 0.964 at most; every scene's JPEG q75 copy at 0.992 and above, its resize at
# 0.9999 and above.
THRESHOLD = 0.98
SCENES = 30


def clip_embeddings(images):
    """``N x D`` L2-normalised embeddings by the demo model: open_clip's encode_image on the
    model's eval transform (what ``jobs.label --embeddings`` stores)."""
    import open_clip

    import gclip

    model = gclip.load_model("demo").model
    cfg = model.visual.preprocess_cfg
    transform = open_clip.image_transform(
        model.visual.image_size, is_train=False, mean=cfg["mean"], std=cfg["std"]
    )
    batch = torch.stack([transform(Image.fromarray(image)) for image in images])
    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_image(batch).float(), dim=-1).numpy()


def jpeg(image, quality=75):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def resized(image):
    return np.asarray(Image.fromarray(image).resize((144, 144), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A run of SCENES distinct demo scenes plus planted copies (JPEG q75 and 3/4-size
    resizes, one scene with both), in shuffled manifest order over several shards.

    Returns the output, the ids, the embeddings and the planted groups (sets of ids)."""
    rng = np.random.default_rng(3)
    scenes = [
        generate_scene(rng, size_hw=(192, 192), radius_range=(20.0, 48.0)).image_hwc_uint8
        for _ in range(SCENES)
    ]
    copies = [(s, "jpeg", jpeg(scenes[s])) for s in (1, 4, 9, 16, 25)]
    copies += [(s, "resized", resized(scenes[s])) for s in (4, 12, 20, 28)]
    named = [(f"scene{i:02d}", image) for i, image in enumerate(scenes)]
    named += [(f"scene{s:02d}-{kind}", image) for s, kind, image in copies]
    order = rng.permutation(len(named))
    ids = np.array([named[i][0] for i in order], dtype=object)
    images = [named[i][1] for i in order]
    root = tmp_path_factory.mktemp("dedup")
    out = label_images(root, images, list(ids), relative=True)
    vectors = clip_embeddings(images)
    write_embeddings(out, vectors, ids)
    groups = {}
    for s, kind, _ in copies:
        groups.setdefault(s, {f"scene{s:02d}"}).add(f"scene{s:02d}-{kind}")
    return out, ids, vectors, sorted(groups.values(), key=sorted)


def groups_of(table):
    rows = table.to_pylist()
    found = {}
    for row in rows:
        found.setdefault(row["group"], []).append(row["image_id"])
    return found


def test_planted_copies_are_found_in_deterministic_groups(planted):
    out, ids, vectors, expected = planted
    duplicates = find_duplicates(str(out), DedupSettings(threshold=THRESHOLD, index="flat"))
    found = groups_of(duplicates.table)
    assert sorted(map(set, found.values()), key=sorted) == expected  # recall 1, no false group
    assert duplicates.index == "flat" and duplicates.images == len(ids)
    position = {image_id: n for n, image_id in enumerate(ids)}
    # groups numbered by their first member in run order; members in run order
    firsts = [members[0] for _, members in sorted(found.items())]
    assert [position[f] for f in firsts] == sorted(position[f] for f in firsts)
    for members in found.values():
        assert [position[m] for m in members] == sorted(position[m] for m in members)
    # similarity: to the group's first member, from the embeddings themselves
    first_of = {g: members[0] for g, members in found.items()}
    for row in duplicates.table.to_pylist():
        exact = float(
            vectors[position[row["image_id"]]] @ vectors[position[first_of[row["group"]]]]
        )
        assert row["similarity"] == pytest.approx(exact, abs=1e-5) and row["similarity"] > THRESHOLD
        schemas.validate(row, "duplicates_row")
    again = find_duplicates(str(out), DedupSettings(threshold=THRESHOLD, index="flat"))
    assert again.table.equals(duplicates.table)
    ivf = find_duplicates(str(out), DedupSettings(threshold=THRESHOLD, index="ivf", nlist=4))
    assert ivf.index == "ivf" and ivf.table.select(["group", "image_id"]).equals(
        duplicates.table.select(["group", "image_id"])
    )


def test_ivf_recall_against_the_exact_index(tmp_path):
    """Approximate neighbours: the IVF index's pairs against the exact index's, on 3,000 random
    embeddings (D=32) with 150 near-copies (cosine about 0.98) planted; recall printed."""
    rng = np.random.default_rng(11)
    base = unit_rows(rng, 3000, 32)
    sources = rng.choice(3000, size=150, replace=False)
    noisy = base[sources] + rng.normal(scale=0.03, size=(150, 32)).astype(np.float32)
    vectors = np.concatenate([base, noisy / np.linalg.norm(noisy, axis=1, keepdims=True)])
    ids = np.array([f"v{i:05d}" for i in range(len(vectors))], dtype=object)
    out = label_images(
        tmp_path, [np.zeros((2, 2, 3), np.uint8)] * len(ids), list(ids), shard_size=500
    )
    write_embeddings(out, vectors, ids, shard_size=500)

    scratch = tmp_path / "scratch"
    scratch.mkdir()

    def pairs(index, block_size=1_000_000):
        settings = DedupSettings(
            threshold=0.95, index=index, nprobe=8, block_size=block_size, scratch=str(scratch)
        )
        table = find_duplicates(str(out), settings).table.to_pylist()
        first = {}
        for row in table:
            first.setdefault(row["group"], row["image_id"])
        return {
            (first[r["group"]], r["image_id"]) for r in table if r["image_id"] != first[r["group"]]
        }

    exact, approximate = pairs("flat"), pairs("ivf")
    # the lists built in blocks (4 files of ~1,000 vectors, merged on disk): the same lists
    assert pairs("ivf", block_size=700) == approximate
    assert list(scratch.iterdir()) == []  # the on-disk lists and blocks removed after
    planted = {(f"v{s:05d}", f"v{3000 + n:05d}") for n, s in enumerate(sources)}
    assert exact == planted  # random vectors: no pair above 0.95 but the planted ones
    recall = len(approximate & exact) / len(exact)
    print(f"IVF recall (nlist 4 sqrt(N), nprobe 8) against the exact index: {recall:.3f}")
    assert recall >= 0.95 and approximate <= exact


def test_keep_one_manifest_is_labelled_by_the_job(planted, tmp_path):
    out, ids, _, expected = planted
    duplicates = find_duplicates(str(out), DedupSettings(threshold=THRESHOLD))
    keep = tmp_path / "elsewhere" / "keep.parquet"  # not beside the images: uris resolved
    kept = write_keep_manifest(str(out), duplicates.dropped(), str(keep))
    manifest = pq.read_table(keep)
    original = pq.read_table(out.parent / "m.parquet")
    assert manifest.schema.names == original.schema.names  # every column kept
    dropped = {m for group in groups_of(duplicates.table).values() for m in group[1:]}
    assert len(dropped) == sum(len(g) - 1 for g in expected)
    wanted = [i for i in ids if i not in dropped]
    assert kept == len(wanted) and manifest["image_id"].to_pylist() == wanted
    config = RunConfig.from_settings(
        manifest=str(keep),
        vocabulary=str(out.parent / "vocab.txt"),
        output=str(tmp_path / "relabelled"),
        pretrained="none",
    )
    summary = run_labelling(config, LocalBackend(BrightnessSegmenter()))
    assert summary.ok and summary.images_labelled == len(wanted) and summary.images_failed == 0
    labelled = pq.read_table(tmp_path / "relabelled" / "annotations")["image_id"].to_pylist()
    assert set(labelled) == set(wanted)


def test_the_job_writes_the_groups_and_the_manifest(planted, tmp_path, capsys):
    out, ids, _, expected = planted
    keep = tmp_path / "keep.parquet"
    argv = [str(out), "--threshold", str(THRESHOLD), "--write-manifest", str(keep)]
    assert jobs.dedup.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{len(expected)} groups" in printed and "keep-one manifest" in printed
    table = pq.read_table(out / "duplicates.parquet")
    assert table.schema.names == ["group", "image_id", "similarity"]
    assert sorted(map(set, groups_of(table).values()), key=sorted) == expected
    assert pq.read_table(keep).num_rows == len(ids) - sum(len(g) - 1 for g in expected)


def test_the_job_refuses_bad_input(tmp_path, capsys):
    out = label_images(tmp_path, [np.zeros((4, 4, 3), np.uint8)] * 2)
    assert jobs.dedup.main([str(out), "--threshold", "0.9"]) == 2
    assert "--embeddings" in capsys.readouterr().err
    assert jobs.dedup.main([str(tmp_path / "nothing")]) == 2
    with pytest.raises(SystemExit):
        jobs.dedup.main([str(out), "--threshold", "1.5"])


def test_integer_ids_no_groups_and_unfinished_shards(tmp_path):
    """Integer manifest ids keep their type; a shard without its marker is not read; a run
    without near-duplicates writes an empty table and keeps every row."""
    rng = np.random.default_rng(5)
    ids = np.array(list(range(100, 110)), dtype=object)
    out = label_images(tmp_path, [np.zeros((3, 3, 3), np.uint8)] * 10, list(ids))
    vectors = unit_rows(rng, 10, 16)
    vectors[7] = vectors[1]  # an exact copy
    vectors[8] = vectors[1]  # another, in shard 2
    write_embeddings(out, vectors, ids)
    # shard 2 loses its marker: unfinished, its embeddings (a copy of 101) must not count
    (out / "shards" / "shard-000002.json").unlink()
    duplicates = find_duplicates(str(out), DedupSettings(threshold=0.9))
    assert duplicates.images == 8 and duplicates.table.to_pylist() == [
        {"group": 0, "image_id": 101, "similarity": 1.0},
        {"group": 0, "image_id": 107, "similarity": pytest.approx(1.0, abs=1e-6)},
    ]
    assert duplicates.table.schema.field("image_id").type == "int64"
    keep = tmp_path / "keep.parquet"
    assert write_keep_manifest(str(out), duplicates.dropped(), str(keep)) == 9
    assert pq.read_table(keep)["image_id"].to_pylist() == [i for i in ids if i != 107]
    vectors[7] = unit_rows(rng, 1, 16)[0]
    write_embeddings(out, vectors, ids)
    none = find_duplicates(str(out), DedupSettings(threshold=0.9))
    assert none.table.num_rows == 0 and none.table.schema.names == [
        "group",
        "image_id",
        "similarity",
    ]
    assert write_keep_manifest(str(out), none.dropped(), str(keep)) == 10
