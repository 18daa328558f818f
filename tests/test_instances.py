"""Instances: thing classes split into connected components, exactly; stuff stays whole."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from scipy import ndimage

import schemas
from gclip import parse_json
from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.formats.coco import annotation_mask, categories, encode_annotations
from pipeline.formats.instances import instances

VOCABULARY = {
    "classes": [
        {"id": 1, "name": "road", "isthing": False},
        {"id": 2, "name": "car"},
        {"id": 3, "name": "background", "background": True},
    ]
}


def two_cars_on_a_road():
    """``24 x 30`` labels: road (0) everywhere, two cars (1), a 2-pixel speck of car, and a
    second road patch cut off by background (2)."""
    labels = np.zeros((24, 30), np.uint8)
    labels[2:8, 3:12] = 1  # 54 px
    labels[14:22, 18:28] = 1  # 80 px
    labels[20, 2:4] = 1  # 2 px speck
    labels[:, 14:16] = 2  # a background column splits the road in two
    confidence = np.random.default_rng(0).uniform(0.3, 1.0, labels.shape).astype(np.float32)
    return labels, confidence


def test_components_are_eight_connected_and_small_ones_dropped():
    mask = np.zeros((10, 10), bool)
    mask[1:3, 1:3] = True
    mask[3:5, 3:5] = True  # touches the first only at a corner: one object
    mask[7:10, 7:10] = True
    mask[0, 9] = True  # one pixel
    found = list(instances(mask, min_area=2))
    masks = [inst.mask(mask.shape).astype(bool) for inst in found]
    assert found[0].box_yx == (slice(1, 5), slice(1, 5))  # the bounding box, as slices
    assert found[1].mask(mask.shape, order="F").flags.f_contiguous
    assert [int(m.sum()) for m in masks] == [8, 9]  # raster order of first pixel
    assert not (masks[0] & masks[1]).any()
    np.testing.assert_array_equal(masks[0] | masks[1], mask & ~np.eye(10, k=9, dtype=bool))
    assert len(list(instances(mask, min_area=1))) == 3


def test_thing_classes_split_exactly_and_stuff_stays_whole(tmp_path):
    vocab = parse_json(VOCABULARY)
    labels, confidence = two_cars_on_a_road()
    semantic = encode_annotations(labels, confidence, vocab, image_id=1)
    split = encode_annotations(labels, confidence, vocab, image_id=1, min_instance_area=10)
    by_category: dict[int, list[dict]] = {}
    for ann in split.annotations:
        by_category.setdefault(ann["category_id"], []).append(ann)
    # Two cars (the speck is under min_area), one road mask though its region is in two
    # pieces, one background mask.
    assert {k: len(v) for k, v in by_category.items()} == {1: 1, 2: 2, 3: 1}
    cars = [annotation_mask(a, labels.shape) for a in by_category[2]]
    expected, _ = ndimage.label(labels == 1, structure=np.ones((3, 3)))
    np.testing.assert_array_equal(cars[0], expected == 1)
    np.testing.assert_array_equal(cars[1], expected == 2)
    np.testing.assert_array_equal(cars[0] | cars[1], (labels == 1) & (expected != 3))
    for ann, mask in zip(by_category[2], cars, strict=True):
        ys, xs = np.nonzero(mask)
        assert ann["area"] == mask.sum()
        assert ann["bbox"] == [xs.min(), ys.min(), np.ptp(xs) + 1, np.ptp(ys) + 1]
        assert ann["score"] == pytest.approx(float(confidence[mask].mean()))
    # Stuff and background annotations are the semantic ones, byte for byte.
    whole = [a for a in semantic.annotations if a["category_id"] != 2]
    assert [a for a in split.annotations if a["category_id"] != 2] == whole
    # Regions describe whole classes (speck included), however the masks were split.
    assert split.regions == semantic.regions
    car = next(r for r in split.regions if r.category_id == 2)
    assert car.pixels == 136
    # Categories carry isthing; the file loads with pycocotools.
    cats = categories(vocab)
    assert [(c["isthing"], c["supercategory"]) for c in cats] == [
        (0, "stuff"),
        (1, "object"),
        (0, "background"),
    ]
    path = tmp_path / "c.json"
    anns = [{**a, "id": n} for n, a in enumerate(split.annotations, 1)]
    images = [{"id": 1, "height": 24, "width": 30}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    coco = COCO(str(path))
    assert len(coco.getAnnIds(catIds=[2])) == 2
    assert mask_utils.area(coco.annToRLE(coco.loadAnns(coco.getAnnIds(catIds=[2]))[1])) == 80


def test_isthing_round_trips_through_the_json_vocabulary():
    vocab = parse_json(VOCABULARY)
    assert [c.is_thing for c in vocab.classes] == [False, True, False]
    assert parse_json(vocab.to_json()) == vocab
    assert "isthing" not in vocab.to_json()["classes"][1]  # things are the default
    with pytest.raises(ValueError, match="isthing"):
        parse_json({"classes": [{"id": 1, "name": "a", "isthing": "no"}]})


def test_the_job_writes_instances(tmp_path):
    """Two bright squares give two "bright" instances in COCO and in the Parquet dataset;
    the summary stays per class; without the flag, one mask per class."""
    (tmp_path / "img").mkdir()
    image = np.zeros((40, 50, 3), np.uint8)
    image[5:15, 5:20] = 255
    image[25:35, 30:45] = 255
    image[38, 0] = 255  # one bright pixel: under --min-area
    Image.fromarray(image).save(tmp_path / "img" / "a.png")
    pq.write_table(
        pa.table({"image_id": ["a"], "uri": [str(tmp_path / "img" / "a.png")]}),
        tmp_path / "m.parquet",
    )
    (tmp_path / "v.json").write_text(
        json.dumps(
            {"classes": [{"id": 1, "name": "dark", "isthing": False}, {"id": 2, "name": "bright"}]}
        )
    )

    def run(output, **kw):
        config = RunConfig.from_settings(
            manifest=str(tmp_path / "m.parquet"),
            vocabulary=str(tmp_path / "v.json"),
            output=str(tmp_path / output),
            pretrained="none",
            **kw,
        )
        assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
        return json.loads((tmp_path / output / "annotations.json").read_text())

    semantic, split = run("semantic"), run("split", instances=True, min_area=4)
    schemas.validate(split, "annotations")
    assert split["info"]["min_instance_area"] == 4 and semantic["info"]["min_instance_area"] is None
    assert [a["category_id"] for a in semantic["annotations"]] == [1, 2]
    assert [a["category_id"] for a in split["annotations"]] == [1, 2, 2]
    assert [a["area"] for a in split["annotations"]] == [40 * 50 - 301, 150, 150]
    bright = np.zeros((40, 50), bool)
    for ann in split["annotations"][1:]:
        bright |= annotation_mask(ann, (40, 50))
    expected = image[..., 0] == 255
    expected[38, 0] = False  # the speck
    np.testing.assert_array_equal(bright, expected)
    rows = pq.read_table(tmp_path / "split" / "annotations").to_pylist()
    assert [(r["category"], r["area"]) for r in rows] == [
        ("dark", 1699),
        ("bright", 150),
        ("bright", 150),
    ]
    summaries = [pq.read_table(tmp_path / o / "summary").to_pylist() for o in ("semantic", "split")]
    assert summaries[0] == summaries[1]
    assert summaries[1][1]["pixel_fraction"] == pytest.approx(301 / 2000)
