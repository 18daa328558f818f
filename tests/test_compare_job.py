"""``jobs.compare`` end to end on the demo model and data (4 sampled scenes, 2 variants, in
process): the variants' outputs are ``jobs.label``'s, their mIoU ``jobs.evaluate``'s, and
``best.json`` runs as it is."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import schemas
from jobs import compare as compare_job
from jobs import evaluate as evaluate_job
from jobs import label as label_job
from pipeline import LocalBackend
from pipeline.formats.coco import CocoLabelMaps
from pipeline.formats.layout import label_file_name

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
# What each variant's file sets; the command line gives the model, short side 64, shards of 2.
VARIANTS = {
    "gclip": {"method": "gclip"},
    "maskclip": {"method": "maskclip", "threshold": 0.3, "inference": {"short_side": 48}},
}
COMMAND_LINE = ["--model", "demo", "--short-side", "64", "--shard-size", "2"]


class Counting(LocalBackend):
    closed = 0

    def close(self):
        Counting.closed += 1


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    specs = []
    for name, settings in VARIANTS.items():
        (root / f"{name}.json").write_text(json.dumps(settings))
        specs += ["--variant", f"{name}={root / name}.json"]
    argv = [
        *(
            "--manifest",
            str(DEMO / "manifest.parquet"),
            "--vocabulary",
            str(DEMO / "vocabulary.txt"),
        ),
        *("--sample", "4", "--seed", "0", "--ground-truth", str(DEMO / "ground_truth")),
        *("--output", str(root / "out"), *COMMAND_LINE, *specs),
    ]
    assert compare_job.main(argv, backend=Counting()) == 0
    assert Counting.closed == 1  # one backend for every variant, closed once at the end
    return root, argv


def label_maps(output):
    """Each image's ``H x W`` class indices from a run's merged COCO file, by image_id."""
    coco = json.loads((output / "annotations.json").read_text())
    maps = CocoLabelMaps(coco)
    return {image["image_id"]: maps.label_map(image) for image in coco["images"]}


def test_the_outputs_and_the_sample_they_share(compared):
    root, _ = compared
    out = root / "out"
    record = json.loads((out / "compare.json").read_text())
    schemas.validate(record, "compare")
    ids = record["sample"]["image_ids"]
    assert len(ids) == 4 and pq.read_table(out / "sample.parquet")["image_id"].to_pylist() == ids
    for name in VARIANTS:
        assert sorted(label_maps(out / "variants" / name)) == sorted(ids)
        schemas.validate(json.loads((out / "configs" / f"{name}.json").read_text()), "run_config")
    # The variant's file over the command line: maskclip's short side is its own 48.
    for name, side in (("gclip", 64), ("maskclip", 48)):
        run = json.loads((out / "variants" / name / "run.json").read_text())
        assert run["config"]["inference"]["short_side"] == side
        assert run["config"]["shard_size"] == 2 and run["config"]["model"] == "demo"


def test_each_variant_is_a_label_run_with_its_config_on_the_sample(compared, tmp_path):
    root, _ = compared
    out = root / "out"
    for name in VARIANTS:
        alone = tmp_path / name
        argv = ["--config", str(root / f"{name}.json"), "--manifest", str(out / "sample.parquet")]
        argv += ["--vocabulary", str(DEMO / "vocabulary.txt"), "--output", str(alone)]
        argv += [COMMAND_LINE[i] for i in (0, 1, 4, 5)]  # what the file leaves out
        argv += [] if "inference" in VARIANTS[name] else COMMAND_LINE[2:4]
        assert label_job.main(argv, backend=LocalBackend()) == 0
        mine, theirs = label_maps(out / "variants" / name), label_maps(alone)
        assert mine.keys() == theirs.keys()
        for image_id, labels_hw in mine.items():
            assert np.array_equal(labels_hw, theirs[image_id]), (name, image_id)
        ours = json.loads((out / "variants" / name / "run.json").read_text())
        alone_run = json.loads((alone / "run.json").read_text())
        assert ours["fingerprint"] == alone_run["fingerprint"]


def independent_miou(predicted, truth_folder, classes):
    """mmseg's mIoU by hand: one confusion matrix, IoU where the union is not empty."""
    confusion = np.zeros((classes, classes + 1), np.int64)
    for image_id, labels_hw in predicted.items():
        truth_hw = np.asarray(Image.open(truth_folder / label_file_name(image_id))).astype(int)
        keep = truth_hw < classes
        guess = np.where(labels_hw[keep] < classes, labels_hw[keep], classes)
        np.add.at(confusion, (truth_hw[keep], guess), 1)
    square = confusion[:, :classes]
    inter = np.diag(square)
    union = confusion.sum(1) + square.sum(0) - inter
    return float(np.mean(inter[union > 0] / union[union > 0]))


def test_each_variants_miou_is_jobs_evaluates_and_the_best_is_the_highest(compared, tmp_path):
    root, _ = compared
    out = root / "out"
    record = json.loads((out / "compare.json").read_text())
    truth = tmp_path / "truth"  # the demo's ground truth of the sample, copied as it is
    truth.mkdir()
    for image_id in record["sample"]["image_ids"]:
        shutil.copy(DEMO / "ground_truth" / label_file_name(image_id), truth)
    mious = {}
    for variant in record["variants"]:
        name, figures = variant["name"], variant["figures"]
        copy = tmp_path / name
        shutil.copytree(out / "variants" / name, copy)
        assert evaluate_job.main(["--predictions", str(copy), "--ground-truth", str(truth)]) == 0
        evaluation = json.loads((copy / "evaluation.json").read_text())
        assert figures["miou"] == evaluation["miou"]
        assert figures["pixel_accuracy"] == evaluation["pixel_accuracy"]
        assert evaluation["images"] == 4 and not evaluation["images_missed"]
        # ... as the variant's own evaluation.json, and as a hand computation.
        assert json.loads((out / "variants" / name / "evaluation.json").read_text()) == evaluation
        predicted = label_maps(out / "variants" / name)
        assert figures["miou"] == pytest.approx(independent_miou(predicted, truth, 13), abs=1e-9)
        mious[name] = figures["miou"]
    assert len(set(mious.values())) == 2, "the variants should differ for this test to bite"
    assert record["best"] == max(mious, key=mious.get)


def test_coverage_and_confidence_are_the_labels_own(compared):
    root, _ = compared
    out = root / "out"
    record = json.loads((out / "compare.json").read_text())
    vocabulary = [
        c["name"]
        for c in json.loads((out / "variants/gclip/annotations.json").read_text())["categories"]
    ]
    for variant in record["variants"]:
        figures, folder = variant["figures"], out / "variants" / variant["name"]
        maps = label_maps(folder)
        present = {int(v) for m in maps.values() for v in np.unique(m) if v != 255}
        assert set(figures["classes_covered"]) == {vocabulary[i] for i in present}
        pixels = sum(m.size for m in maps.values())
        labelled = sum(int((m != 255).sum()) for m in maps.values())
        assert figures["labelled_share"] == pytest.approx(labelled / pixels)
        summary = pq.read_table(folder / "summary").to_pandas()
        summary["w"] = summary.pixel_fraction * summary.mean_confidence
        per_image = (
            summary.groupby("image_id").w.sum() / summary.groupby("image_id").pixel_fraction.sum()
        )
        assert figures["mean_confidence"] == pytest.approx(float(per_image.mean()))


def test_the_page_has_a_row_per_image_and_a_column_per_variant(compared):
    root, _ = compared
    page = (root / "out" / "compare.html").read_text()
    record = json.loads((root / "out" / "compare.json").read_text())
    pictures = re.findall(
        r'<img src="data:image/(png|jpeg);base64,([^"]+)"[^>]*alt="([^"]+)"', page
    )
    assert len(pictures) == 4 * len(VARIANTS)
    expected = [f"{i}, {v}" for i in record["sample"]["image_ids"] for v in VARIANTS]
    assert [alt for _, _, alt in pictures] == expected  # rows in sample order, columns as given
    for _, data, _ in pictures:
        assert Image.open(io.BytesIO(base64.b64decode(data))).size[1] > 100
    for variant in record["variants"]:
        assert f"{variant['figures']['miou']:.2%}" in page
        assert f"{len(variant['figures']['classes_covered'])} / 13" in page
    assert '<tr class="best"><td><b>' + record["best"] in page


def test_best_json_runs_as_it_is_and_reproduces_the_best_labels(compared):
    root, _ = compared
    out = root / "out"
    best = json.loads((out / "best.json").read_text())
    schemas.validate(best, "run_config")
    assert best["manifest"] == str(DEMO / "manifest.parquet")  # the whole manifest
    assert label_job.main(["--config", str(out / "best.json")], backend=LocalBackend()) == 0
    whole = label_maps(Path(best["output"]))
    assert len(whole) == 16
    name = json.loads((out / "compare.json").read_text())["best"]
    for image_id, labels_hw in label_maps(out / "variants" / name).items():
        assert np.array_equal(whole[image_id], labels_hw), image_id


class Refusing(LocalBackend):
    def resolve(self, *args, **kwargs):
        raise AssertionError("a finished variant is labelled again")


def test_rerunning_keeps_the_finished_variants(compared):
    root, argv = compared
    runs = {n: (root / "out" / "variants" / n / "run.json").read_bytes() for n in VARIANTS}
    page = (root / "out" / "compare.json").read_bytes()
    assert compare_job.main(argv, backend=Refusing()) == 0
    for name, before in runs.items():
        assert (root / "out" / "variants" / name / "run.json").read_bytes() == before
    assert (root / "out" / "compare.json").read_bytes() == page


@pytest.mark.browser
def test_the_page_opens_in_headless_chromium_with_every_picture_loaded(compared, tmp_path):
    from test_report import chromium

    browser = chromium()
    root, _ = compared
    # A copy with a probe: once loaded, the title says how many pictures decoded.
    probe = (
        "<script>addEventListener('load',()=>{const i=[...document.images];"
        "document.title='loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '"
        "+i.length;});</script>"
    )
    page = tmp_path / "probe.html"
    text = (root / "out" / "compare.html").read_text()
    page.write_text(text.replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    pictures = 4 * len(VARIANTS)
    assert f"<title>loaded {pictures} of {pictures}</title>" in dom
