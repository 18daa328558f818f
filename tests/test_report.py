"""jobs.report on a real (fake-segmenter) run: its figures against an independent reading of the
run's files, the page's structure, escaping and pictures, and the page in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from collections import Counter, defaultdict
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fakes import BrightnessSegmenter
from PIL import Image

from jobs import report as report_job
from pipeline import LocalBackend, RunConfig, run_labelling
from pipeline.formats.coco import CocoLabelMaps
from pipeline.reading.preview import render
from pipeline.reading.report_data import gather

NASTY = '<script>alert("x")</script> & ü <b>'
NASTY_FAILED = "<img src=x onerror=alert(1)>&amp;"
COUNT = 11
BROKEN = {4: b"garbage bytes", 7: None}  # not an image; a missing file


def make_run(root: Path, shard_size: int = 3) -> Path:
    """Noise images of several sizes and contrasts (so images differ in confidence), a few
    broken, ids that need escaping; labelled by the fake segmenter in process."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    ids, uris = [], []
    for i in range(COUNT):
        path = root / "img" / f"{i}.png"
        ids.append(NASTY if i == 2 else NASTY_FAILED if i == 4 else f"im{i}")
        uris.append(str(path))
        if i in BROKEN:
            if BROKEN[i] is not None:
                path.write_bytes(BROKEN[i])
            continue
        contrast = 10 + 11 * i  # per image: the farther from grey, the more confident
        noise = rng.uniform(-contrast, contrast, (12 + 2 * i, 20 - i, 1))
        Image.fromarray(np.repeat(127.5 + noise, 3, axis=2).astype(np.uint8)).save(path)
    pq.write_table(pa.table({"image_id": ids, "uri": uris}), root / "m.parquet")
    (root / "vocab.txt").write_text("dark & <deep>, shadow\nbright\nnever seen\n")
    config = RunConfig.from_settings(
        manifest=str(root / "m.parquet"),
        vocabulary=str(root / "vocab.txt"),
        output=str(root / "out"),
        shard_size=shard_size,
        pretrained="none",
    )
    assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
    return root / "out"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("report"))


def markers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "shards").glob("*.json"))]


def summary_rows(out: Path) -> list[tuple[int, dict]]:
    """``(shard, row)`` for every summary row, in shard then row order."""
    rows = []
    for path in sorted((out / "summary").glob("*.parquet")):
        shard = int(path.stem.split("-")[1])
        rows += [(shard, row) for row in pq.read_table(path).to_pylist()]
    return rows


def lowest_confidence(out: Path, n: int) -> list[tuple[str, float]]:
    per_image: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0, 0, 0])
    for position, (shard, row) in enumerate(summary_rows(out)):
        acc = per_image[row["image_id"]]
        if not acc[1]:
            acc[2], acc[3] = shard, position
        acc[0] += row["pixel_fraction"] * row["mean_confidence"]
        acc[1] += row["pixel_fraction"]
    ranked = sorted(per_image.items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[1][2], kv[1][3]))
    return [(image_id, acc[0] / acc[1]) for image_id, acc in ranked[:n]]


def test_counts_and_failures_equal_the_markers(run_dir):
    data = gather(str(run_dir), review=3, examples=1)
    found = markers(run_dir)
    t = data.totals
    assert t.images_labelled == sum(m["images"] for m in found) == COUNT - len(BROKEN)
    assert t.images_failed == sum(m["images_failed"] for m in found) == len(BROKEN)
    assert t.annotations == sum(m["annotations"] for m in found)
    assert (t.shards_done, t.shards_planned) == (len(found), 4)
    assert t.images_without_labels == 0
    failures = [f for m in found for f in m["failures"]]
    assert data.failures_by_error == dict(Counter(f["error"] for f in failures))
    assert set(data.failures_by_error) == {"ImageDecodeError", "FileNotFoundError"}
    # one example per cause, the first of its kind in shard order
    first = {}
    for f in failures:
        first.setdefault(f["error"], (f["image_id"], f["uri"], f["error"], f["message"]))
    assert sorted((f.image_id, f.uri, f.error, f.message) for f in data.failure_examples) == sorted(
        first.values()
    )
    run = json.loads((run_dir / "run.json").read_text())
    assert run["counts"]["images_labelled"] == t.images_labelled
    assert data.run["state"] == "finished"


def test_class_figures_equal_the_coco_files(run_dir):
    data = gather(str(run_dir), bins=10)
    images, area = Counter(), Counter()
    for path in sorted((run_dir / "coco").glob("*.json")):
        for annotation in json.loads(path.read_text())["annotations"]:
            images[annotation["category_id"]] += 1
            area[annotation["category_id"]] += annotation["area"]
    confidences = defaultdict(list)
    for _, row in summary_rows(run_dir):
        confidences[row["category_id"]].append(row["mean_confidence"])
    labelled, total = COUNT - len(BROKEN), sum(area.values())
    by_id = {c.category["id"]: c for c in data.classes}
    assert [c.category["name"] for c in data.classes][-1] == "never seen"
    assert [c.pixels for c in data.classes] == sorted(area.get(i, 0) for i in (1, 2, 3))[::-1]
    for category_id in (1, 2, 3):
        figures = by_id[category_id]
        assert figures.images == images[category_id]
        assert figures.image_share == pytest.approx(images[category_id] / labelled)
        assert figures.pixel_share == pytest.approx(area[category_id] / total)
        expected, _ = np.histogram(confidences[category_id], bins=10, range=(0, 1))
        assert list(figures.confidence_bins) == expected.tolist()
    assert by_id[3].images == 0 and by_id[3].pixel_share == 0 and not any(by_id[3].confidence_bins)


@pytest.mark.parametrize("n", [0, 1, 4, 100])
def test_review_queue_is_the_lowest_mean_confidences_in_order(run_dir, n):
    review = gather(str(run_dir), review=n).review
    expected = lowest_confidence(run_dir, n)
    assert [c.image_id for c in review] == [i for i, _ in expected]
    assert [c.mean_confidence for c in review] == pytest.approx([m for _, m in expected])
    assert len(review) == min(n, COUNT - len(BROKEN))
    # the queue spans shards: the pick is not one shard's
    assert n < 4 or len({c.shard for c in review}) > 1


class Page(HTMLParser):
    """The page's ``<img>`` attributes and its text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.tags: Counter[str] = Counter()
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] += 1
        if tag == "img":
            self.images.append(dict(attrs))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def expected_picture(run_dir: Path, image_id: str) -> Image.Image:
    """The review picture drawn independently: label map from the COCO shard file."""
    for path in sorted((run_dir / "coco").glob("*.json")):
        coco = json.loads(path.read_text())
        for image in coco["images"]:
            if image["image_id"] == image_id:
                labels_hw = CocoLabelMaps(coco).label_map(image)
                pixels = np.asarray(Image.open(image["file_name"]).convert("RGB"))
                picture = render(pixels, labels_hw, coco["categories"])
                picture.thumbnail((800, 800))
                return picture
    raise AssertionError(f"{image_id} is in no COCO shard file")


def test_page_holds_the_review_pictures(run_dir, capsys):
    assert report_job.main([str(run_dir), "--review", "5"]) == 0
    assert "report.html" in capsys.readouterr().out
    page = parse(run_dir / "report.html")
    assert len(page.images) == 5
    assert (
        page.tags["svg"] == 2
    )  # the predicted classes: "never seen" is only named and page.tags["script"] == 0 and page.tags["link"] == 0
    for (image_id, _), attrs in zip(lowest_confidence(run_dir, 5), page.images, strict=True):
        header, payload = attrs["src"].split(",", 1)
        assert header in ("data:image/png;base64", "data:image/jpeg;base64")
        picture = Image.open(io.BytesIO(base64.b64decode(payload)))
        assert picture.format == header[len("data:image/") : -len(";base64")].upper()
        expected = expected_picture(run_dir, image_id)
        assert picture.size == expected.size == (int(attrs["width"]), int(attrs["height"]))
        assert attrs["alt"] == image_id
        drawn = np.asarray(picture.convert("RGB"), np.int16)
        difference = np.abs(drawn - np.asarray(expected, np.int16))
        # PNG is exact; JPEG (chosen when smaller) only close
        assert difference.max() == 0 if picture.format == "PNG" else difference.mean() < 8
    text = " ".join(page.text)
    for needle in ("ImageDecodeError", "FileNotFoundError", "never seen", "summary/"):
        assert needle in text


def test_ids_and_names_are_escaped(run_dir):
    assert report_job.main([str(run_dir), "--review", "100"]) == 0
    source = (run_dir / "report.html").read_text(encoding="utf-8")
    for raw in (NASTY, NASTY_FAILED, "dark & <deep>"):
        assert raw not in source
    page = parse(run_dir / "report.html")
    text = "".join(page.text)
    assert NASTY in text and NASTY_FAILED in text and "dark & <deep>" in text
    assert page.tags["script"] == 0
    assert sum(1 for attrs in page.images if attrs["alt"] == NASTY) == 1
    assert all(attrs["src"].startswith("data:image/") for attrs in page.images)


def test_lost_image_is_drawn_over_grey(tmp_path):
    out = make_run(tmp_path)
    worst = lowest_confidence(out, 1)[0][0]
    uri = next(
        row["uri"]
        for row in pq.read_table(out / "annotations").to_pylist()
        if row["image_id"] == worst
    )
    Path(uri).unlink()
    assert report_job.main([str(out), "--review", "2"]) == 0
    page = parse(out / "report.html")
    assert len(page.images) == 2
    assert "image not shown: FileNotFoundError" in " ".join(page.text)


def test_ledger_lagging_behind_the_markers(run_dir, tmp_path):
    """Shards the ledger has not heard of are counted from their markers."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "ledger")
    before, after = gather(str(run_dir)), gather(str(copy))
    assert after.totals == before.totals
    assert after.failures_by_error == before.failures_by_error
    assert after.review == before.review and after.classes == before.classes


def test_run_with_no_finished_shard_yet(run_dir, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    shutil.copy(run_dir / "run.json", started / "run.json")
    assert report_job.main([str(started)]) == 0
    data = gather(str(started))
    assert data.totals.images_labelled == data.totals.shards_done == 0 and not data.review
    assert all(c.images == 0 and c.pixel_share == 0 for c in data.classes)
    assert len(parse(started / "report.html").images) == 0


def test_not_a_run_exits_2(tmp_path, capsys):
    (tmp_path / "folder").mkdir()
    for location in (tmp_path / "folder", tmp_path / "missing"):
        assert report_job.main([str(location)]) == 2
        assert "holds no run.json: not a gclip-label output" in capsys.readouterr().err
    assert not (tmp_path / "folder" / "report.html").exists()


@pytest.mark.slow
def test_run_on_s3(run_dir, s3_env):
    pafs.copy_files(str(run_dir), "labels/copied", destination_filesystem=s3_env)
    on_s3 = gather("s3://labels/copied", review=4)
    local = gather(str(run_dir), review=4)
    assert (on_s3.totals, on_s3.classes, on_s3.review) == (
        local.totals,
        local.classes,
        local.review,
    )
    assert report_job.main(["s3://labels/copied", "--review", "4"]) == 0
    with s3_env.open_input_stream("labels/copied/report.html") as stream:
        page = Page()
        page.feed(stream.read().decode())
    assert len(page.images) == 4


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip(
        "no chromium, chromium-browser or google-chrome executable (apt-get install chromium)"
    )


@pytest.mark.browser
def test_page_renders_in_headless_chromium(run_dir, tmp_path):
    browser = chromium()
    assert report_job.main([str(run_dir), "--review", "6"]) == 0
    # A copy with a probe: once loaded, the title says how many images decoded.
    probe = (
        "<script>addEventListener('load',()=>{const i=[...document.images];"
        "document.title='loaded '+i.filter(x=>x.complete&&x.naturalWidth>0).length+' of '+i.length"
        "+' svg '+document.querySelectorAll('svg').length;});</script>"
    )
    page = tmp_path / "probe.html"
    page.write_text((run_dir / "report.html").read_text().replace("</body>", probe + "</body>"))
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run(
        [*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert "<title>loaded 6 of 6 svg 2</title>" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
        capture_output=True,
        timeout=120,
        check=True,
    )
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape == (2000, 1280, 3)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # text, charts and pictures drawn
