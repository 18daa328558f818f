"""Exports of a fast stand-in run (no PNGs: label maps rasterised from the COCO masks; ids
with dots and slashes): filters, keys, failures, resume after an interruption, s3."""

from __future__ import annotations

import json
import shutil
import tarfile
import urllib.parse

import numpy as np
import pyarrow.parquet as pq
import pytest
from export_fixtures import (
    FAKE_IDS,
    decode_png,
    expected_images,
    fake_output,
    make_fake_run,
    mean_confidence,
)

from jobs import export as export_job
from pipeline.errors import InputError
from pipeline.exports import ExportOptions, Filter, export_run
from pipeline.exports import webdataset as wds_format
from pipeline.exports.brush_rle import encode
from pipeline.exports.samples import sample_key
from pipeline.exports.selection import decode_label_png, encode_label_png
from pipeline.reading import LabelledImages


@pytest.fixture(scope="session")
def fake_run(tmp_path_factory):
    return fake_output(tmp_path_factory)


def _tar_samples(folder):
    """``(member names, {image_id: {ext: bytes}})`` of every tar in ``folder``, in order."""
    names, samples = [], {}
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as archive:
            for member in archive.getmembers():
                names.append(member.name)
                key, extension = member.name.split(".", 1)
                samples.setdefault(key, {})[extension] = archive.extractfile(member).read()
    by_id = {json.loads(files["json"])["image_id"]: files for files in samples.values()}
    return names, by_id


def test_keys_are_flat_dot_free_and_give_the_id_back():
    from webdataset.tariterators import base_plus_ext

    keys = {sample_key(i) for i in [*FAKE_IDS, "a.b", "a_b", "a%2Eb", "a%252Eb", 7, "7"]}
    assert len(keys) == len(FAKE_IDS) + 5  # 7 and "7" share a key (KEY.json keeps the type)
    for image_id in ["a/b.c.jpg", "..", "x y/ü.png", "a%2Eb"]:
        key = sample_key(image_id)
        assert "." not in key and "/" not in key and urllib.parse.unquote(key) == image_id
        assert base_plus_ext(f"{key}.label.png") == (key, "label.png")
    assert sample_key("x" * 300).startswith("_") and len(sample_key("x" * 300)) == 25


def test_webdataset_of_a_run_without_pngs_holds_its_coco_masks(fake_run, tmp_path):
    expected = expected_images(fake_run)
    summary = export_run(str(fake_run), "webdataset", str(tmp_path / "w"), progress=False)
    names, found = _tar_samples(tmp_path / "w")
    assert sorted(found) == sorted(expected) and summary.samples == len(expected)
    for image_id, files in found.items():
        source = "jpg" if image_id.endswith(".jpg") else "png"
        assert set(files) == {source, "label.png", "json"}
        assert files[source] == expected[image_id]["bytes"]
        np.testing.assert_array_equal(decode_png(files["label.png"]), expected[image_id]["labels"])
    assert all("." not in n.split(".", 1)[0] for n in names)


def _selected_by_summary(run, min_confidence=None, classes=()):
    """The images the summary table says a filter keeps (pyarrow and plain Python only)."""
    rows = pq.read_table(run / "summary").to_pylist()
    by_image = {}
    for row in rows:
        by_image.setdefault(row["image_id"], []).append(row)
    return sorted(
        i
        for i, r in by_image.items()
        if (min_confidence is None or mean_confidence(r) >= min_confidence)
        and (not classes or {x["category"] for x in r} & set(classes))
    )


def test_filters_select_exactly_the_images_the_summary_says(fake_run, tmp_path):
    rows = pq.read_table(fake_run / "summary").to_pylist()
    means = sorted({mean_confidence([r for r in rows if r["image_id"] == i]) for i in FAKE_IDS})
    threshold = means[len(means) // 2]
    cases = [
        Filter(threshold),
        Filter(classes=("dark",)),
        Filter(threshold, ("bright",)),
        Filter(1.01 - 0.01),  # nothing that confident: an empty export
    ]
    for n, chosen in enumerate(cases):
        want = _selected_by_summary(fake_run, chosen.min_confidence, chosen.classes)
        assert n == 3 or 0 < len(want) < len(FAKE_IDS), chosen  # each case selects some
        export_run(str(fake_run), "webdataset", str(tmp_path / str(n)), chosen, progress=False)
        assert sorted(_tar_samples(tmp_path / str(n))[1]) == want, chosen
        dataset = LabelledImages(str(fake_run), None, chosen.min_confidence, chosen.classes)
        assert sorted(dataset.record(k).image_id for k in range(len(dataset))) == want


def test_unknown_classes_and_bad_settings_are_refused_with_exit_2(fake_run, tmp_path, capsys):
    common = [str(fake_run), "--format", "webdataset", "--to", str(tmp_path / "x")]
    assert export_job.main([*common, "--classes", "giraffe"]) == 2
    assert "giraffe" in capsys.readouterr().err
    assert export_job.main([*common, "--min-confidence", "1.5"]) == 2
    assert export_job.main([*common, "--shard-mb", "0"]) == 2
    assert export_job.main([str(tmp_path), "--format", "hf", "--to", str(tmp_path / "y")]) == 2


def test_an_interrupted_export_resumes_without_duplicating_samples(fake_run, tmp_path, monkeypatch):
    options = ExportOptions(shard_mb=0.0003)  # ~300 bytes: a part per image or two
    clean = export_run(str(fake_run), "webdataset", str(tmp_path / "clean"), options=options)
    assert clean.parts >= 4
    real_add, calls = wds_format._TarPart.add, []

    def failing_add(self, sample):
        calls.append(sample.record.image_id)
        if len(calls) == 5:
            raise KeyboardInterrupt  # the process stopped mid-part
        return real_add(self, sample)

    monkeypatch.setattr(wds_format._TarPart, "add", failing_add)
    with pytest.raises(KeyboardInterrupt):
        export_run(str(fake_run), "webdataset", str(tmp_path / "out"), options=options)
    monkeypatch.setattr(wds_format._TarPart, "add", real_add)
    done_before = sorted((tmp_path / "out" / "_parts").iterdir())
    assert 0 < len(done_before) < clean.parts
    assert not list((tmp_path / "out").glob(".tmp-*"))  # the cut part left nothing behind
    resumed = export_run(str(fake_run), "webdataset", str(tmp_path / "out"), options=options)
    assert resumed.resumed == len(done_before) and resumed.samples == clean.samples
    names, _ = _tar_samples(tmp_path / "out")
    assert len(names) == len(set(names)) == 3 * clean.samples  # no sample twice
    for name in clean.files:  # and the same bytes as an export never interrupted
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
    again = export_run(str(fake_run), "webdataset", str(tmp_path / "out"), options=options)
    assert again.resumed == again.parts == clean.parts  # finished: nothing rewritten
    with pytest.raises(InputError, match="other options"):
        export_run(str(fake_run), "webdataset", str(tmp_path / "out"), options=ExportOptions())


def test_an_unreadable_image_is_recorded_and_the_others_exported(tmp_path):
    make_fake_run(tmp_path)
    expected = expected_images(tmp_path / "out")
    (tmp_path / "img" / "2.png").unlink()  # "plain", gone since the run
    export_run(str(tmp_path / "out"), "hf", str(tmp_path / "hf"), progress=False)
    import datasets

    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    assert sorted(dataset["image_id"]) == sorted(set(expected) - {"plain"})
    [marker] = sorted((tmp_path / "hf" / "_parts").iterdir())
    failures = json.loads(marker.read_text())["failures"]
    assert [(f["image_id"], f["error"]) for f in failures] == [("plain", "FileNotFoundError")]
    record = json.loads((tmp_path / "hf" / "export.json").read_text())
    assert record["state"] == "finished" and record["counts"]["failures"] == 1


def test_export_to_s3(fake_run, s3_env, tmp_path):
    summary = export_run(str(fake_run), "webdataset", "s3://labels/exp", progress=False)
    local = tmp_path / "copy"
    local.mkdir()
    for name in summary.files:
        with s3_env.open_input_stream(f"labels/exp/{name}") as stream:
            (local / name).write_bytes(stream.read())
    assert sorted(_tar_samples(local)[1]) == sorted(expected_images(fake_run))
    assert s3_env.get_file_info("labels/exp/export.json").size > 0


def test_sixteen_bit_label_maps_round_trip():
    labels_hw = np.array([[0, 300], [65535, 299]], np.uint16)
    np.testing.assert_array_equal(decode_label_png(encode_label_png(labels_hw, [])), labels_hw)
    small = np.array([[0, 1], [255, 1]], np.uint8)
    assert decode_label_png(encode_label_png(small, [[1, 2, 3]])).dtype == np.uint8


def test_brush_rle_is_label_studios_own_encoding():
    from label_studio_sdk.converter.brush import decode_rle, mask2rle

    rng = np.random.default_rng(0)
    for shape, share in [((1, 1), 1.0), ((3, 5), 0.5), ((40, 60), 0.02), ((200, 400), 0.0)]:
        mask = rng.random(shape) < share
        mask[: shape[0] // 2, : shape[1] // 3] = True  # a long run too
        rle = encode(mask)
        assert rle == mask2rle(mask.astype(np.uint8) * 255)
        decoded = decode_rle(rle).reshape(*shape, 4)[:, :, 3]
        np.testing.assert_array_equal(decoded, mask * 255)
    long = np.ones((300, 300), bool)  # 360,000 values: runs cut at 65,536
    assert decode_rle(encode(long)).reshape(300, 300, 4)[:, :, 3].min() == 255


def test_the_job_prints_what_it_wrote(fake_run, tmp_path, capsys):
    dest = tmp_path / "j"
    argv = [str(fake_run), "--format", "mmseg", "--to", str(dest), "--no-progress"]
    assert export_job.main(argv) == 0
    assert (
        f"{len(expected_images(fake_run))} images in 1 parts -> {dest}" in capsys.readouterr().out
    )
    shutil.rmtree(dest)
