"""Each export format of a demo run read back by its own library: images byte-equal to the
sources, label maps equal to the run's PNGs, class tables equal to the run's categories."""

from __future__ import annotations

import ast
import json
import sys
import types
import urllib.parse
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from export_fixtures import decode_png, demo_output, expected_images, mean_confidence

import schemas
from pipeline.exports import ExportOptions, Filter, export_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    return demo_output(tmp_path_factory)


def _check_sample(expected, image_id, image_bytes, label_png):
    assert image_bytes == expected[image_id]["bytes"], image_id
    np.testing.assert_array_equal(decode_png(label_png), expected[image_id]["labels"])


def test_webdataset_reads_back_with_the_webdataset_library(demo_run, tmp_path):
    import webdataset as wds

    expected = expected_images(demo_run)
    summary = export_run(
        str(demo_run), "webdataset", str(tmp_path / "wds"), options=ExportOptions(shard_mb=0.05)
    )
    assert summary.parts > 1 and summary.samples == len(expected)
    urls = [str(tmp_path / "wds" / name) for name in summary.files]
    seen = []
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        document = json.loads(sample["json"])
        schemas.validate(document, "export_sample")
        image_id = document["image_id"]
        assert urllib.parse.unquote(sample["__key__"]) == image_id
        _check_sample(expected, image_id, sample["png"], sample["label.png"])
        assert document["categories"] == expected[image_id]["categories"]
        rows = sorted(expected[image_id]["summary"], key=lambda r: r["category_id"])
        assert [(c["id"], c["pixel_share"], c["mean_confidence"]) for c in document["classes"]] == [
            (r["category_id"], r["pixel_fraction"], r["mean_confidence"]) for r in rows
        ]
        assert document["mean_confidence"] == pytest.approx(mean_confidence(rows))
        seen.append(image_id)
    assert seen == sorted(expected)  # every image once, in the run's order
    schemas.validate(json.loads((tmp_path / "wds" / "export.json").read_text()), "export")


@pytest.mark.ray
def test_webdataset_reads_back_with_ray_data(demo_run, tmp_path, ray_local):
    import ray.data

    expected = expected_images(demo_run)
    summary = export_run(str(demo_run), "webdataset", str(tmp_path / "wds"), progress=False)
    paths = [str(tmp_path / "wds" / name) for name in summary.files]
    rows = ray.data.read_webdataset(paths, decoder=None).take_all()
    assert len(rows) == len(expected)
    for row in rows:
        image_id = json.loads(row["json"])["image_id"]
        _check_sample(expected, image_id, row["png"], row["label.png"])


def test_hf_dataset_loads_from_disk_with_class_names(demo_run, tmp_path):
    import datasets

    expected = expected_images(demo_run)
    export_run(str(demo_run), "hf", str(tmp_path / "hf"), options=ExportOptions(shard_mb=0.05))
    dataset = datasets.load_from_disk(str(tmp_path / "hf"))
    categories = next(iter(expected.values()))["categories"]
    assert dataset.features["classes"].feature.names == [c["name"] for c in categories]
    assert json.loads(dataset.info.description)["categories"] == categories
    raw = dataset.cast_column("image", datasets.Image(decode=False))
    raw = raw.cast_column("label", datasets.Image(decode=False))
    assert raw["image_id"] == sorted(expected)
    for row, decoded in zip(raw, dataset, strict=True):
        _check_sample(expected, row["image_id"], row["image"]["bytes"], row["label"]["bytes"])
        np.testing.assert_array_equal(
            np.asarray(decoded["label"]), expected[row["image_id"]]["labels"]
        )
        present = sorted({r["category_id"] for r in expected[row["image_id"]]["summary"]})
        assert [categories[i]["id"] for i in row["classes"]] == present


def test_labelstudio_masks_decode_with_label_studios_own_converter(demo_run, tmp_path):
    from label_studio_sdk.converter.brush import decode_from_annotation, decode_rle

    expected = expected_images(demo_run)
    prefix = "http://localhost:8081/data/local-files/?d=images"
    export_run(
        str(demo_run),
        "labelstudio",
        str(tmp_path / "ls"),
        options=ExportOptions(image_url_prefix=prefix, shard_mb=0.003),
    )
    assert len(list((tmp_path / "ls" / "tasks").iterdir())) > 1  # parts joined into one file
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    categories = next(iter(expected.values()))["categories"]
    names = [c["name"] for c in categories]
    assert [t["data"]["image_id"] for t in tasks] == sorted(expected)
    for task in tasks:
        schemas.validate(task, "labelstudio_task")
        image_id = task["data"]["image_id"]
        assert task["data"]["image"] == f"{prefix}/{image_id}"
        labels_hw = expected[image_id]["labels"]
        rebuilt = np.full(labels_hw.shape, 255, np.uint8)
        results = task["predictions"][0]["result"]
        for result in results:
            h, w = result["original_height"], result["original_width"]
            mask = decode_rle(result["value"]["rle"]).reshape(h, w, 4)[:, :, 3]
            assert set(np.unique(mask)) <= {0, 255}
            rebuilt[mask == 255] = names.index(result["value"]["brushlabels"][0])
        np.testing.assert_array_equal(rebuilt, labels_hw)
        # the converter's own reader of a result (as Label Studio exports them: value flattened)
        layers = decode_from_annotation("label", [{**r, **r["value"]} for r in results])
        assert len(layers) == len(np.unique(labels_hw[labels_hw != 255]))
    config = ET.fromstring((tmp_path / "ls" / "labeling_config.xml").read_text())
    labels = config.find("BrushLabels")
    assert [label.get("value") for label in labels] == names
    assert labels.get("toName") == config.find("Image").get("name") == "image"
    assert labels[1].get("background") == "#{:02x}{:02x}{:02x}".format(*categories[1]["color"])


def test_labelstudio_refuses_local_images_without_a_prefix(demo_run, tmp_path):
    from pipeline.errors import InputError

    with pytest.raises(InputError, match="--image-url-prefix"):
        export_run(str(demo_run), "labelstudio", str(tmp_path / "ls"), progress=False)
    assert not (tmp_path / "ls").exists()


def test_mmseg_folders_splits_and_dataset_config(demo_run, tmp_path):
    expected = expected_images(demo_run)
    options = ExportOptions(val_fraction=0.5, seed=3)
    export_run(str(demo_run), "mmseg", str(tmp_path / "mm"), options=options, progress=False)
    found = {}
    for split in ("train", "val"):
        for path in sorted((tmp_path / "mm" / "img_dir" / split).iterdir()):
            key = path.name.removesuffix(".png")
            image_id = urllib.parse.unquote(key)
            annotation = (tmp_path / "mm" / "ann_dir" / split / f"{key}.png").read_bytes()
            _check_sample(expected, image_id, path.read_bytes(), annotation)
            found[image_id] = split
    assert sorted(found) == sorted(expected)
    assert set(found.values()) == {"train", "val"}  # 6 images at 0.5: both splits hold some
    # a split depends on the image alone: a filtered export puts each image where it was
    present = [r["category"] for r in expected[sorted(expected)[0]]["summary"]]
    chosen = Filter(classes=(present[-1],))
    export_run(
        str(demo_run), "mmseg", str(tmp_path / "mm2"), chosen, options=options, progress=False
    )
    again = {
        urllib.parse.unquote(p.name.removesuffix(".png")): split
        for split in ("train", "val")
        if (tmp_path / "mm2" / "img_dir" / split).exists()
        for p in (tmp_path / "mm2" / "img_dir" / split).iterdir()
    }
    assert again and all(found[i] == s for i, s in again.items())
    # dataset.py: valid Python registering the run's classes and palette
    text = (tmp_path / "mm" / "dataset.py").read_text()
    ast.parse(text)
    namespace = _exec_with_stub_mmseg(text)
    categories = next(iter(expected.values()))["categories"]
    meta = namespace["GclipLabelDataset"].METAINFO
    assert list(meta["classes"]) == [c["name"] for c in categories]
    assert meta["palette"] == [c["color"] for c in categories]
    assert namespace["data_root"] == str(tmp_path / "mm")
    given = namespace["GclipLabelDataset"]().kwargs
    assert given["img_suffix"] == ".png" and given["ignore_index"] == 255


def _exec_with_stub_mmseg(text):
    """Run dataset.py against stand-ins of mmseg's BaseSegDataset and registry."""

    class BaseSegDataset:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    registry = types.SimpleNamespace(register_module=lambda: lambda cls: cls)
    stubs = {
        "mmseg": types.ModuleType("mmseg"),
        "mmseg.datasets": types.SimpleNamespace(BaseSegDataset=BaseSegDataset),
        "mmseg.registry": types.SimpleNamespace(DATASETS=registry),
    }
    saved = {k: sys.modules.get(k) for k in stubs}
    sys.modules.update(stubs)
    try:
        namespace: dict = {}
        exec(compile(text, "dataset.py", "exec"), namespace)
        return namespace
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def test_tar_headers_are_fixed_so_a_rewritten_part_has_the_same_bytes(demo_run, tmp_path):
    import tarfile

    first = export_run(str(demo_run), "webdataset", str(tmp_path / "a"), progress=False)
    export_run(str(demo_run), "webdataset", str(tmp_path / "b"), progress=False)
    for name in first.files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    with tarfile.open(tmp_path / "a" / first.files[0]) as archive:
        member = archive.getmembers()[0]
    assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
