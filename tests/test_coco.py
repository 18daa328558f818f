"""COCO encoding round-trips through pycocotools to the exact label map."""

from __future__ import annotations

import json

import numpy as np
from pycocotools.coco import COCO

from gclip import parse_json
from pipeline.formats.coco import categories, decode_label_map, encode_annotations


def test_round_trip_through_pycocotools(tmp_path):
    vocab = parse_json(
        {
            "classes": [
                {"id": 10, "name": "road"},
                {"id": 20, "name": "car"},
                {"id": 30, "name": "sky"},
            ]
        }
    )
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (17, 23)).astype(np.uint8)
    labels[0, :5] = 255  # unlabelled pixels get no annotation
    labels[labels == 2] = 1  # class 2 absent
    confidence = rng.random((17, 23)).astype(np.float32)
    anns = encode_annotations(labels, confidence, vocab, image_id=7).annotations
    assert sorted(a["category_id"] for a in anns) == [10, 20]
    for number, ann in enumerate(anns, start=1):
        ann["id"] = number
    road = next(a for a in anns if a["category_id"] == 10)
    assert road["area"] == int((labels == 0).sum())
    assert road["score"] == float(confidence[labels == 0].mean())
    ys, xs = np.nonzero(labels == 0)
    assert road["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    coco_file = tmp_path / "a.json"
    coco_file.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "width": 23, "height": 17}],
                "annotations": anns,
                "categories": categories(vocab),
            }
        )
    )
    coco = COCO(str(coco_file))
    rebuilt = np.full((17, 23), 255, np.uint8)
    index = {10: 0, 20: 1, 30: 2}
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[7])):
        rebuilt[coco.annToMask(ann).astype(bool)] = index[ann["category_id"]]
    np.testing.assert_array_equal(rebuilt, labels)
    np.testing.assert_array_equal(decode_label_map(anns, (17, 23), index), labels)
