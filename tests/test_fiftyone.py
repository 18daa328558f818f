"""A run loaded as a FiftyOne dataset: every field against the run's own files.

The tests marked ``fiftyone`` need the extra (``pip install -e '.[fiftyone]'``) and are skipped
without it; they use a MongoDB of their own under a temporary folder, stopped at the end. The
others (the missing extra, the pure helpers, the import boundary) run everywhere.
"""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image
from test_pipeline_local import make_dataset

from gclip import Segmentation
from jobs import fiftyone as fiftyone_job
from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.errors import InputError
from pipeline.formats.coco import CocoLabelMaps, annotation_mask
from pipeline.reading import fiftyone_dataset as fod
from pipeline.reading import fiftyone_fields

REPO = Path(__file__).resolve().parents[1]
PREFIX = f"gclip-test-{uuid.uuid4().hex[:8]}"  # this session's datasets, deleted at its end
_ENV = {
    "FIFTYONE_DO_NOT_TRACK": "true",
    "FIFTYONE_DATABASE_VALIDATION": "false",  # MongoDB 6.0 draws a deprecation warning
}


@pytest.fixture(scope="module")
def fo(tmp_path_factory):
    """fiftyone, with a database of this module's own; the datasets and ``mongod`` go at the end."""
    env = {**_ENV, "FIFTYONE_DATABASE_DIR": str(tmp_path_factory.mktemp("fiftyone-db"))}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # read once, when fiftyone is first imported
    try:
        module = pytest.importorskip(
            "fiftyone", reason="needs the fiftyone extra: pip install -e '.[fiftyone]'"
        )
        yield module
        for name in module.list_datasets():
            if name.startswith(PREFIX):
                module.delete_dataset(name)
        _stop_database()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _stop_database():
    """Close the client and stop the ``mongod`` this process started (FiftyOne would only
    stop it once the process exits); wait for it to be gone."""
    from fiftyone.core.odm import database

    service = database._db_service
    database._disconnect()
    if service is not None and service.child is not None and not service.attached:
        child = service.child
        service.stop()  # closes the service's stdin: it stops mongod, then exits
        child.wait(timeout=60)
    database._db_service = None
    os.environ.pop("FIFTYONE_PRIVATE_DATABASE_PORT", None)


def unique(name):
    return f"{PREFIX}-{name}-{uuid.uuid4().hex[:6]}"


def labelled(root, vocabulary=None, segmenter=None, **settings):
    """A finished run of the fake segmenter over ``root``'s generated images."""
    if vocabulary is not None:
        (root / "vocab.txt").write_text(vocabulary)
    values = {
        "manifest": str(root / "m.parquet"),
        "vocabulary": str(root / "vocab.txt"),
        "output": str(root / "out"),
        "shard_size": 2,
        "png_labels": True,
        "pretrained": "none",
        **settings,
    }
    run_labelling(
        RunConfig.from_settings(**values), LocalBackend(segmenter or BrightnessSegmenter())
    )
    return Path(values["output"])


def coco_files(out):
    return [json.loads(p.read_text()) for p in sorted((out / "coco").glob("*.json"))]


def by_image_id(dataset):
    return {s.image_id: s for s in dataset}


@pytest.mark.fiftyone
def test_samples_hold_the_runs_masks_and_figures(fo, tmp_path):
    """Masks equal the COCO label maps and the PNGs; figures equal SQL over ``summary/``;
    targets, colours and info come from the run; the failed image is counted, not loaded."""
    root = make_dataset(tmp_path, count=5, broken=(2,))
    out = labelled(root)
    name = unique("run")
    summary = fod.load_run(str(out), name, samples_per_batch=2)  # batches cut across shards
    assert (summary.samples, summary.failures, summary.shards) == (4, 1, 3)
    dataset = fo.load_dataset(name)
    assert dataset.persistent and len(dataset) == 4
    assert [n for n in fo.list_datasets() if n.startswith(name)] == [name]  # no staging left
    samples = by_image_id(dataset)
    categories = None
    for coco in coco_files(out):
        categories = coco["categories"]
        maps = CocoLabelMaps(coco)
        for image in coco["images"]:
            sample = samples[str(image["image_id"])]
            mask = sample.segmentation.get_mask()
            assert mask.dtype == np.uint8
            np.testing.assert_array_equal(mask, maps.label_map(image))
            png = np.asarray(Image.open(out / image["label_file"]))  # mode P: the indices
            np.testing.assert_array_equal(mask, png)
            pixels = np.asarray(Image.open(image["file_name"]).convert("RGB")).mean(axis=2)
            np.testing.assert_array_equal(mask, (pixels > 127).astype(np.uint8))  # the fake's rule
            assert sample.filepath == os.path.abspath(image["file_name"])
            assert (sample.metadata.width, sample.metadata.height) == (
                image["width"],
                image["height"],
            )
    assert set(samples) == {"im0", "im1", "img/3", "im4"}

    # The figures: from summary/ read as one table, and from the fake's own confidences.
    rows = pads.dataset(out / "summary", format="parquet").to_table().to_pylist()
    fields = dataset.info["class_share_fields"]
    assert fields == {"dark": "dark", "bright": "bright"}
    for image_id, sample in samples.items():
        mine = [r for r in rows if r["image_id"] == image_id]
        weight = sum(r["pixel_fraction"] for r in mine)
        expected = sum(r["pixel_fraction"] * r["mean_confidence"] for r in mine) / weight
        assert sample.mean_confidence == pytest.approx(expected, abs=1e-12)
        assert sample.labelled_fraction == pytest.approx(weight, abs=1e-12) == pytest.approx(1.0)
        shares = {fields[f]: v for f, v in sample.class_shares.to_dict().items() if f in fields}
        assert shares == pytest.approx({r["category"]: r["pixel_fraction"] for r in mine})
        assert sample.classes == [r["category"] for r in mine]
        pixels = (
            np.asarray(Image.open(sample.filepath).convert("RGB")).astype(np.float32).mean(axis=2)
        )
        truth = float((0.5 + np.abs(pixels - 127.5) / 255).astype(np.float32).mean())
        assert sample.mean_confidence == pytest.approx(truth, rel=1e-5)  # every pixel labelled

    targets = {i: c["name"] for i, c in enumerate(categories)}
    assert dataset.mask_targets == {"segmentation": targets}
    assert dataset.default_mask_targets == targets
    colors = dataset.app_config.color_scheme.default_mask_targets_colors
    assert colors == [
        {"intTarget": i, "color": "#" + "".join(f"{v:02x}" for v in c["color"])}
        for i, c in enumerate(categories)
    ]
    run = json.loads((out / "run.json").read_text())
    info = dataset.info
    assert (
        info["run"]["config"] == run["config"] and info["run"]["fingerprint"] == run["fingerprint"]
    )
    assert info["coco_info"] == coco_files(out)[0]["info"]
    assert info["categories"] == categories
    assert info["images_failed"] == 1 and sum(info["failures_by_error"].values()) == 1
    # The App's filters: a range over a class share, a sort by confidence.
    bright = dataset.match(fo.ViewField("class_shares.bright") > 0.4)
    assert {s.image_id for s in bright} == {
        i for i, s in samples.items() if s.class_shares.bright > 0.4
    }
    ordered = [s.mean_confidence for s in dataset.sort_by("mean_confidence")]
    assert ordered == sorted(ordered)


class WideSegmenter(BrightnessSegmenter):
    """Bright pixels get class 300 of a 301-class vocabulary: uint16 maps, 16-bit PNGs."""

    def segment(self, images, vocabulary, config=None):
        return [
            Segmentation(s.labels_hw.astype(np.uint16) * 300, s.confidence_hw)
            for s in super().segment(images, vocabulary, config)
        ]


@pytest.mark.fiftyone
def test_16_bit_label_maps_are_read_from_the_runs_pngs(fo, tmp_path):
    root = make_dataset(tmp_path, count=3)
    out = labelled(root, "".join(f"class {i}\n" for i in range(301)), WideSegmenter())
    name = unique("wide")
    fod.load_run(str(out), name)
    dataset = fo.load_dataset(name)
    samples = by_image_id(dataset)
    for coco in coco_files(out):
        maps = CocoLabelMaps(coco)
        for image in coco["images"]:
            segmentation = samples[image["image_id"]].segmentation
            assert segmentation.mask is None
            assert segmentation.mask_path == os.path.abspath(out / image["label_file"])
            mask = segmentation.get_mask()  # FiftyOne's own reader
            assert mask.dtype == np.uint16 and mask.max() == 300
            np.testing.assert_array_equal(mask, maps.label_map(image))
    assert dataset.default_mask_targets == {i: f"class {i}" for i in range(301)}


def two_bright_squares(root, count=3):
    """Images with two bright squares each (two instances of the thing class "bright" on
    "dark" stuff), a manifest and a JSON vocabulary saying which class is stuff."""
    (root / "img").mkdir(parents=True)
    uris = []
    for i in range(count):
        image = np.zeros((30 + i, 40, 3), np.uint8)
        image[2:8, 2 : 10 + i] = 255
        image[15:25, 20:35] = 255
        uris.append(str(root / "img" / f"{i}.png"))
        Image.fromarray(image).save(uris[-1])
    pq.write_table(
        pa.table({"image_id": [f"pair/{i}" for i in range(count)], "uri": uris}),
        root / "m.parquet",
    )
    classes = [{"id": 1, "name": "dark", "isthing": False}, {"id": 2, "name": "st. bernard"}]
    (root / "vocab.json").write_text(json.dumps({"classes": classes}))
    return root


@pytest.mark.fiftyone
def test_thing_annotations_become_detections_when_the_run_made_instances(fo, tmp_path):
    root = two_bright_squares(tmp_path)

    def labelled_with_stuff(output, **settings):
        vocabulary = str(root / "vocab.json")  # "dark" is stuff
        config = RunConfig.from_settings(
            str(root / "m.parquet"), vocabulary, str(root / output), pretrained="none", **settings
        )
        assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
        return root / output

    out = labelled_with_stuff("semantic")
    semantic = unique("semantic")
    fod.load_run(str(out), semantic)
    assert "instances" not in fo.load_dataset(semantic).get_field_schema()  # no instances run

    out = labelled_with_stuff("split", instances=True, min_area=4)
    name = unique("instances")
    fod.load_run(str(out), name)
    dataset = fo.load_dataset(name)
    assert dataset.info["class_share_fields"] == {"dark": "dark", "st_bernard": "st. bernard"}
    samples = by_image_id(dataset)
    for coco in coco_files(out):
        assert [c["isthing"] for c in coco["categories"]] == [0, 1]
        maps = CocoLabelMaps(coco)
        for image in coco["images"]:
            sample = samples[image["image_id"]]
            np.testing.assert_array_equal(sample.segmentation.get_mask(), maps.label_map(image))
            things = [
                a
                for a in coco["annotations"]
                if a["image_id"] == image["id"] and a["category_id"] == 2
            ]
            assert len(things) == 2  # the two squares
            detections = sample.instances.detections
            assert len(detections) == len(things)
            h, w = image["height"], image["width"]
            for detection, ann in zip(detections, things, strict=True):
                x, y, bw, bh = ann["bbox"]
                assert detection.label == "st. bernard"
                assert detection.bounding_box == pytest.approx([x / w, y / h, bw / w, bh / h])
                assert detection.confidence == ann["score"]
                whole = annotation_mask(ann, (h, w))
                crop = whole[int(y) : int(y + bh), int(x) : int(x + bw)]
                np.testing.assert_array_equal(detection.mask, crop)
                assert detection.mask.sum() == whole.sum() == ann["area"]  # nothing cut off


@pytest.mark.fiftyone
def test_a_taken_name_is_refused_without_overwrite(fo, tmp_path, capsys, monkeypatch):
    out = labelled(make_dataset(tmp_path, count=3))
    launched = []
    monkeypatch.setattr(fiftyone_job, "launch", launched.append)  # the App would block
    name = unique("job")
    assert fiftyone_job.main([str(out), "--name", name]) == 0
    first = {s.id for s in fo.load_dataset(name)}
    assert f"3 images of 2 shards loaded as FiftyOne dataset '{name}'" in capsys.readouterr().out

    assert fiftyone_job.main([str(out), "--name", name]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert {s.id for s in fo.load_dataset(name)} == first  # untouched

    assert launched == []
    assert fiftyone_job.main([str(out), "--name", name, "--overwrite", "--launch"]) == 0
    assert launched == [name]
    again = fo.load_dataset(name)
    assert len(again) == 3 and not {s.id for s in again} & first  # a new dataset
    assert [n for n in fo.list_datasets() if n.startswith(name)] == [name]


@pytest.mark.fiftyone
def test_remote_images_need_a_media_dir_and_are_downloaded_there(fo, s3_env, tmp_path):
    root = make_dataset(tmp_path, count=3)
    manifest = pq.read_table(root / "m.parquet").to_pylist()
    for row in manifest:
        with s3_env.open_output_stream(f"data/{Path(row['uri']).name}") as stream:
            stream.write(Path(row["uri"]).read_bytes())
    pq.write_table(
        pa.Table.from_pylist([{**r, "uri": f"s3://data/{Path(r['uri']).name}"} for r in manifest]),
        root / "m.parquet",
    )
    out = labelled(root)
    name = unique("remote")
    with pytest.raises(InputError, match="--media-dir"):
        fod.load_run(str(out), name)
    assert not [n for n in fo.list_datasets() if n.startswith(name)]  # the failed load is gone

    media = tmp_path / "media"
    fod.load_run(str(out), name, media_dir=str(media))
    for sample, row in zip(
        sorted(fo.load_dataset(name), key=lambda s: s.image_id),
        sorted(manifest, key=lambda r: r["image_id"]),
        strict=True,
    ):
        assert Path(sample.filepath).parent == media
        assert Path(sample.filepath).read_bytes() == Path(row["uri"]).read_bytes()


def test_without_the_extra_the_error_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fiftyone", None)  # as if not installed
    with pytest.raises(
        fod.FiftyOneUnavailableError, match=re.escape("pip install -e '.[fiftyone]'")
    ):
        fod.import_fiftyone()
    assert fiftyone_job.main(["out/nowhere", "--name", "x"]) == 1
    assert "pip install -e '.[fiftyone]'" in capsys.readouterr().err


def test_figures_shares_and_boxes_by_hand():
    rows = [
        {"image_id": "a", "category": "sky", "pixel_fraction": 0.5, "mean_confidence": 0.9},
        {"image_id": "a", "category": "car", "pixel_fraction": 0.25, "mean_confidence": 0.6},
        {"image_id": "a", "category": "car", "pixel_fraction": 0.05, "mean_confidence": 0.2},
        {"image_id": 7, "category": "sky", "pixel_fraction": 0.0, "mean_confidence": 0.5},
    ]
    stats = fiftyone_fields.image_stats(rows)
    assert stats["a"].mean_confidence == pytest.approx((0.45 + 0.15 + 0.01) / 0.8)
    assert stats["a"].labelled_fraction == pytest.approx(0.8)
    assert stats["a"].class_shares == pytest.approx({"sky": 0.5, "car": 0.3})
    assert stats[7] == fiftyone_fields.ImageStats(None, 0.0, {"sky": 0.0})
    assert "b" not in stats

    fields = fiftyone_fields.share_field_names(
        ["Traffic light", "traffic-light", "2nd car", "$id", "_x", "汽车"]
    )
    assert list(fields.values()) == [
        "traffic_light",
        "traffic_light_1",
        "c_2nd_car",
        "id",
        "x",
        "class",
    ]
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", f) for f in fields.values())

    assert fiftyone_fields.normalised_box([10, 5, 20, 15], width=40, height=30) == [
        0.25,
        1 / 6,
        0.5,
        0.5,
    ]
    mask = np.zeros((30, 40), bool)
    mask[5:20, 10:30] = True
    assert fiftyone_fields.box_mask(mask, [10, 5, 20, 15]).shape == (15, 20)
    assert fiftyone_fields.box_mask(mask, [10, 5, 20, 15]).all()
    assert fiftyone_fields.box_mask(mask, [3, 3, 0, 0]).shape == (1, 1)  # never empty


def test_local_media_are_checked_and_remote_ones_need_a_media_dir(tmp_path, monkeypatch):
    image = tmp_path / "a.png"
    image.write_bytes(b"png")
    monkeypatch.chdir(tmp_path)
    assert fiftyone_fields.local_media("a.png", None) == str(image)  # as the job read it
    assert fiftyone_fields.local_media(f"file://{image}", None) == str(image)
    with pytest.raises(InputError, match="run this from the folder the labelling job ran in"):
        fiftyone_fields.local_media("b.png", None)
    with pytest.raises(InputError, match="--media-dir"):
        fiftyone_fields.local_media("https://example.com/a.png", None)


def test_only_the_loader_imports_fiftyone():
    """The rest of the project runs without the extra: nothing else imports fiftyone."""
    loader = REPO / "pipeline" / "reading" / "fiftyone_dataset.py"  # imports it lazily
    importing = [
        path.relative_to(REPO)
        for package in ("gclip", "pipeline", "jobs", "schemas")
        for path in (REPO / package).rglob("*.py")
        if re.search(r"^\s*(import|from)\s+fiftyone\b", path.read_text(), re.M) and path != loader
    ]
    assert importing == []
