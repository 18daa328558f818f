"""jobs.evaluate against PNG and COCO ground truth, and jobs.preview, on a fake-segmenter run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fakes import BrightnessSegmenter
from PIL import Image
from test_pipeline_local import make_dataset

import schemas
from jobs import evaluate as evaluate_job
from jobs import preview as preview_job
from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.formats.layout import label_file_name


@pytest.fixture(params=["merged", "sharded"])
def finished_run(tmp_path, request):
    """A run read back from its merged annotations.json, or from its COCO shard files only."""
    root = make_dataset(tmp_path, count=4)
    config = RunConfig.from_settings(
        manifest=str(root / "m.parquet"),
        vocabulary=str(root / "vocab.txt"),
        output=str(root / "out"),
        shard_size=2,
        merge_limit=100 if request.param == "merged" else 0,
        pretrained="none",
    )
    assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
    if request.param == "merged":
        for shard in (root / "out" / "coco").iterdir():
            shard.unlink()  # only the merged file is left to read
    assert (root / "out" / "annotations.json").exists() == (request.param == "merged")
    return root


def truth(i):
    labels = np.zeros((10 + i, 12), np.uint8)
    labels[:, : 3 + i % 5] = 1
    return labels


def test_png_ground_truth_scores_by_hand(finished_run, capsys):
    gt = finished_run / "gt"
    gt.mkdir()
    for i in range(4):
        labels = truth(i)
        if i == 0:
            labels[:, 3] = 1  # one column the prediction calls dark: 10 pixels wrong
        if i == 1:
            labels[0, :] = 255  # ignored row
        path = gt / label_file_name(f"img/{i}" if i == 3 else f"im{i}")  # gt/img/3.png: nested
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(labels).save(path)
    assert (
        evaluate_job.main(["--predictions", str(finished_run / "out"), "--ground-truth", str(gt)])
        == 0
    )
    report = json.loads((finished_run / "out" / "evaluation.json").read_text())
    schemas.validate(report, "evaluation")
    # image 0 truth: 4 bright columns, prediction 3; every other pixel right
    conf = np.array(report["confusion"])
    assert conf[1, 0] == 10 and conf[0, 1] == 0 and conf[:, 2].sum() == 0
    total = sum(10 + i for i in range(4)) * 12 - 12
    assert report["pixel_accuracy"] == pytest.approx((total - 10) / total)
    bright = conf[1, 1]
    assert report["iou"]["bright"] == pytest.approx(bright / (bright + 10))
    assert "| **mIoU** |" in (finished_run / "out" / "evaluation.md").read_text()
    assert "mIoU" in capsys.readouterr().out


def test_ground_truth_without_a_prediction_is_missed_and_counted_wrong(finished_run, capsys):
    """The ground truth is the set scored: an image it has and the run has not is missed, its
    pixels in the unlabelled column; a prediction without ground truth is named, not scored."""
    gt = finished_run / "gt"
    (gt / "img").mkdir(parents=True)
    for i in (0, 1, 3):  # im2 has no ground truth
        Image.fromarray(truth(i)).save(gt / label_file_name(f"img/{i}" if i == 3 else f"im{i}"))
    Image.fromarray(np.ones((5, 12), np.uint8)).save(gt / "extra.png")  # 60 bright pixels
    out = finished_run / "out"
    assert evaluate_job.main(["--predictions", str(out), "--ground-truth", str(gt)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    schemas.validate(report, "evaluation")
    assert report["images"] == 4 and report["images_missed"] == ["extra"]
    assert report["images_without_ground_truth"] == ["im2"]
    conf = np.array(report["confusion"])
    assert conf[1, 2] == 60 and conf[:, 2].sum() == 60  # the missed image, all of it wrong
    scored = (10 + 11 + 13) * 12  # predicted right, pixel for pixel
    assert report["pixel_accuracy"] == pytest.approx(scored / (scored + 60))
    assert report["iou"]["bright"] == pytest.approx(conf[1, 1] / (conf[1, 1] + 60))
    assert "1 missed" in (out / "evaluation.md").read_text()
    assert "1 ground-truth images have no prediction" in capsys.readouterr().err


def test_a_coco_file_as_predictions_is_scored_beside_it(finished_run):
    out = finished_run / "out"
    if not (out / "annotations.json").exists():
        pytest.skip("the sharded run has no merged file")
    gt = finished_run / "gt"
    for i in range(4):
        path = gt / label_file_name(f"img/{i}" if i == 3 else f"im{i}")
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(truth(i)).save(path)
    predictions = str(out / "annotations.json")
    assert evaluate_job.main(["--predictions", predictions, "--ground-truth", str(gt)]) == 0
    report = json.loads((out / "evaluation.json").read_text())
    assert report["miou"] == pytest.approx(1.0) and report["images_missed"] == []


def test_coco_ground_truth_with_polygons(finished_run):
    images, anns = [], []
    for i in range(4):
        name = "img/3" if i == 3 else f"im{i}"  # matched by file name without extension
        images.append({"id": 100 + i, "file_name": f"{name}.jpg", "height": 10 + i, "width": 12})
        w = 3 + i % 5  # bright block as a polygon, the rest as dark
        anns.append(
            {
                "id": 2 * i + 1,
                "image_id": 100 + i,
                "category_id": 2,
                "iscrowd": 0,
                "segmentation": [[0, 0, w, 0, w, 10 + i, 0, 10 + i]],
            }
        )
        anns.append(
            {
                "id": 2 * i + 2,
                "image_id": 100 + i,
                "category_id": 1,
                "iscrowd": 0,
                "segmentation": [[w, 0, 12, 0, 12, 10 + i, w, 10 + i]],
            }
        )
    gt = finished_run / "gt.json"
    gt.write_text(
        json.dumps(
            {
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "dark"}, {"id": 2, "name": "bright"}],
            }
        )
    )
    assert (
        evaluate_job.main(["--predictions", str(finished_run / "out"), "--ground-truth", str(gt)])
        == 0
    )
    report = json.loads((finished_run / "out" / "evaluation.json").read_text())
    assert report["miou"] == pytest.approx(1.0) and report["images"] == 4


def test_no_matching_ground_truth_is_an_error(finished_run, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        evaluate_job.main(
            ["--predictions", str(finished_run / "out"), "--ground-truth", str(tmp_path / "empty")]
        )
        == 2
    )
    assert "No prediction" in capsys.readouterr().err


def test_previews(finished_run):
    assert preview_job.main([str(finished_run / "out"), "--count", "2"]) == 0
    files = sorted((finished_run / "out" / "previews").iterdir())
    assert len(files) == 2
    picture = np.asarray(Image.open(files[0]).convert("RGB"))
    assert picture.shape[1] > 2 * 12  # image, overlay and legend side by side


def test_coco_ground_truth_matches_ids_that_keep_the_file_name():
    """A manifest made from a COCO file (``jobs.manifest gt.json``) has ids equal to the
    ``file_name``s, extension included; two folders may hold the same stem."""
    from pipeline.reading.evaluation import CocoGroundTruth

    gt = {
        "images": [
            {"id": 1, "file_name": "x/a.jpg", "height": 2, "width": 2},
            {"id": 2, "file_name": "y/a.jpg", "height": 2, "width": 2},
        ],
        "annotations": [
            {
                "id": 1,
                "image_id": 2,
                "category_id": 5,
                "bbox": [0, 0, 1, 1],
                "area": 1,
                "segmentation": {"size": [2, 2], "counts": [0, 1, 3]},
                "iscrowd": 0,
            },
        ],
        "categories": [{"id": 5, "name": "thing"}],
    }
    truth = CocoGroundTruth(gt, {5: 0})
    assert truth.claim({"image_id": "x/a.jpg"}).tolist() == [[255, 255], [255, 255]]
    assert truth.claim({"image_id": "y/a.jpg"}).tolist() == [[0, 255], [255, 255]]
