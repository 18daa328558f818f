"""The benchmark command: presets as the repos state them, the split through the labelling job,
and scores equal to an independent computation from the label maps it wrote."""

from __future__ import annotations

import json

import numpy as np
import pytest
from benchmark_fixtures import make_dataset
from fakes import BrightnessSegmenter
from PIL import Image

import schemas
from jobs import benchmark as benchmark_job
from pipeline import InputError, LocalBackend
from pipeline.formats.layout import label_path
from pipeline.reproduction.datasets import layout
from pipeline.reproduction.presets import DATASETS, PROTOCOLS, default_protocol, preset, published
from pipeline.reproduction.runner import BenchmarkSpec, class_names, run_benchmark

SMALL = {"short_side": 32, "crop": 32, "stride": 16}  # the fixtures' 40 x 30 images, fast


def independent_scores(output, samples, dataset):
    """mIoU and pixel accuracy straight from the label PNGs, class by class (no confusion
    matrix): summed intersections over summed unions, over classes with a union."""
    truths, predictions = [], []
    for sample in samples:
        truths.append(dataset.truth(sample.truth).ravel())
        png = output / label_path(sample.image_id)
        predictions.append(np.asarray(Image.open(png)).ravel())
    truth, prediction = np.concatenate(truths), np.concatenate(predictions)
    valid = truth != 255
    ious = {}
    for c in range(dataset.num_classes):
        inter = np.sum((truth == c) & (prediction == c) & valid)
        union = np.sum(((truth == c) | (prediction == c)) & valid)
        if union:
            ious[c] = inter / union
    accuracy = np.sum((truth == prediction) & valid) / np.sum(valid)
    return float(np.mean(list(ious.values()))), float(accuracy), ious


def test_presets_are_the_repos_configs():
    """Spot checks against the configs as read (SCLIP cfg_voc21.py: logit_scale=65, prob_thd=0.1,
    Resize (2048, 336); ClearCLIP cfg_city_scapes.py: slide_crop=224, stride 224; NACLIP
    cfg_voc20.py: slide_crop=0), and every class file has one line per class."""
    voc = preset("voc21", "sclip")
    assert (voc.short_side, voc.crop, voc.stride, voc.logit_scale, voc.threshold) == (
        336, 224, 112, 65.0, 0.1
    )  # fmt: skip
    assert voc.names.splitlines()[0].startswith("sky, wall, tree")  # background concepts
    city = preset("city", "clearclip")
    assert (city.short_side, city.crop, city.stride, city.logit_scale) == (448, 224, 224, 50.0)
    assert preset("city", "sclip").short_side == 560 == preset("city", "naclip").short_side
    assert preset("voc20", "naclip").crop >= 2048  # whole image
    assert preset("voc21", "clearclip").names.splitlines()[0] == "background"
    assert preset("object", "clearclip").threshold == 0.4
    assert preset("ade", "sclip").threshold is None  # no background: every pixel a class
    for dataset in DATASETS:
        for protocol in PROTOCOLS:
            chosen = preset(dataset, protocol)
            assert len(chosen.names.splitlines()) == layout(dataset).num_classes
            assert not chosen.pamr
    assert class_names(voc)[:2] == ["background", "aeroplane"]
    assert [p["miou_percent"] for p in published("gclip", "city")] == [33.7]
    assert default_protocol("naclip") == "naclip" and default_protocol("gclip") == "clearclip"
    with pytest.raises(ValueError, match="known: voc21"):
        preset("pascal", "sclip")


@pytest.mark.parametrize("dataset", DATASETS)
def test_every_benchmark_scores_its_label_maps(tmp_path, dataset):
    """Through the job in process (a fake model): manifest, vocabulary and label maps in the
    job's layout, one score over the split equal to the independent computation."""
    root = make_dataset(dataset, tmp_path / "data", count=3)
    out = tmp_path / "out"
    spec = BenchmarkSpec(
        dataset, str(root), str(out), "sclip", None, {"inference": SMALL, "pretrained": "none"}
    )
    result = run_benchmark(spec, LocalBackend(BrightnessSegmenter()))
    record = json.loads((out / "benchmark.json").read_text())
    assert record == result.record
    schemas.validate(record, "benchmark")
    samples = layout(dataset).samples(str(root))
    assert record["images"] == len(samples) == 3 and record["images_missed"] == []
    miou, accuracy, ious = independent_scores(out, samples, layout(dataset))
    assert record["miou"] == pytest.approx(miou) and record["pixel_accuracy"] == pytest.approx(
        accuracy
    )
    names = class_names(preset(dataset, "sclip"))
    assert {names.index(n): v for n, v in record["iou"].items() if v is not None} == (
        pytest.approx(ious)
    )
    assert record["inference"]["short_side"] == 32 and record["preset"]["short_side"] != 32
    run = json.loads((out / "run.json").read_text())
    assert run["settings_sources"]["inference.short_side"] == "flag"
    assert run["settings_sources"]["inference.logit_scale"] == "config file"  # the preset
    vocabulary = json.loads((out / "benchmark" / "vocabulary.json").read_text())
    if preset(dataset, "sclip").background:
        assert vocabulary["below_threshold"] == "background" and vocabulary["threshold"] == 0.1
    else:
        assert "threshold" not in vocabulary
    assert "| **this run** |" in (out / "benchmark.md").read_text()


def test_limit_scores_the_first_images_and_a_missing_map_counts_as_missed(tmp_path):
    root = make_dataset("ade", tmp_path / "data", count=4)
    out = tmp_path / "out"
    spec = BenchmarkSpec(
        "ade", str(root), str(out), "sclip", 2, {"inference": SMALL, "pretrained": "none"}
    )
    record = run_benchmark(spec, LocalBackend(BrightnessSegmenter())).record
    samples = layout("ade").samples(str(root))[:2]
    assert record["images"] == 2 and record["limit"] == 2
    assert record["miou"] == pytest.approx(independent_scores(out, samples, layout("ade"))[0])
    (out / label_path(samples[1].image_id)).unlink()  # as if the job had failed on it
    from pipeline.reproduction.scoring import score_split

    split = score_split(str(out), samples, layout("ade").truth, class_names(preset("ade", "sclip")))
    truth = layout("ade").truth(samples[1].truth)
    assert split.missed == (samples[1].image_id,) and split.images == 2
    assert split.scores.confusion[:, -1].sum() == np.sum(truth != 255)  # all of it missed


def test_outputs_on_object_storage_are_refused_before_any_work(tmp_path):
    root = make_dataset("ade", tmp_path / "data", count=1)
    spec = BenchmarkSpec("ade", str(root), "s3://bucket/bench", "sclip")
    with pytest.raises(InputError, match="local folder"):
        run_benchmark(spec, LocalBackend(BrightnessSegmenter()))


def test_the_command_end_to_end_on_the_demo_model(tmp_path, capsys):
    """``python -m jobs.benchmark`` with the demo model on Ray: exit 0, the tables written,
    label maps where the job lays them, the papers' numbers beside ours."""
    root = make_dataset("city", tmp_path / "data", count=3)
    out = tmp_path / "out"
    args = ["--dataset", "city", "--root", str(root), "--output", str(out), "--model", "demo"]
    args += ["--limit", "2", "--short-side", "64", "--crop", "64", "--stride", "32"]
    assert benchmark_job.main(args) == 0
    printed = capsys.readouterr().out
    assert "GCLIP paper" in printed and "33.70" in printed  # published City mIoU beside ours
    record = json.loads((out / "benchmark.json").read_text())
    assert (record["method"], record["protocol"], record["images"]) == ("gclip", "clearclip", 2)
    samples = layout("city").samples(str(root), 2)
    assert record["miou"] == pytest.approx(independent_scores(out, samples, layout("city"))[0])
    assert sorted(p.name for p in (out / "labels").iterdir()) == sorted(
        f"{s.image_id}.png" for s in samples
    )
    assert (
        benchmark_job.main(["--dataset", "voc21", "--root", str(tmp_path), "--output", str(out)])
        == 2
    )
