"""Benchmark dataset readers against tiny copies in each dataset's distributed layout: the split
listed in mmseg's order, both root forms, clear errors, and ground truth decoded as hand-computed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from benchmark_fixtures import DATA_ROOT_BELOW, H, W, blocks_hw, make_dataset
from PIL import Image

from pipeline.reproduction.datasets import LAYOUTS, DatasetError, Sample, layout

NAMES = ("voc21", "voc20", "context60", "context59", "stuff171", "object", "city", "ade", "camvid")

# Split-file order for VOC and Context (the fixture writes it reversed), sorted paths elsewhere.
EXPECTED_IDS = {
    "voc21": ["2007_000051", "2007_000042", "2007_000033"],
    "voc20": ["2007_000051", "2007_000042", "2007_000033"],
    "context60": ["2008_000004", "2008_000003", "2008_000002"],
    "context59": ["2008_000004", "2008_000003", "2008_000002"],
    "stuff171": ["000000000139", "000000000285", "000000000431"],
    "object": ["000000000139", "000000000285", "000000000431"],
    "city": ["frankfurt_000000_000294", "lindau_000000_000576", "munster_000000_000858"],
    "ade": ["ADE_val_00000001", "ADE_val_00000002", "ADE_val_00000003"],
    "camvid": ["0001TP_008550", "0001TP_008580", "Seq05VD_f00000"],
}
# Files (below the data root, {id} filled) each sample's image and truth must be.
EXPECTED_FILES = {
    "voc21": ("JPEGImages/{id}.jpg", "SegmentationClass/{id}.png"),
    "voc20": ("JPEGImages/{id}.jpg", "SegmentationClass/{id}.png"),
    "context60": ("JPEGImages/{id}.jpg", "SegmentationClassContext/{id}.png"),
    "context59": ("JPEGImages/{id}.jpg", "SegmentationClassContext/{id}.png"),
    "stuff171": ("images/val2017/{id}.jpg", "annotations/val2017/{id}_labelTrainIds.png"),
    "object": ("images/val2017/{id}.jpg", "annotations/val2017/{id}_instanceTrainIds.png"),
    "city": (
        "leftImg8bit/val/{city}/{id}_leftImg8bit.png",
        "gtFine/val/{city}/{id}_gtFine_labelIds.png",
    ),
    "ade": ("images/validation/{id}.jpg", "annotations/validation/{id}.png"),
    "camvid": ("test/{id}.png", "testannot/{id}.png"),
}
# Decoded truth per 10 x 10 block of sample 0, worked out by hand from the stored blocks.
EXPECTED_BLOCKS = {
    # stored [[0, 0, 15, 255], [1, 20, 255, 0], [7, 12, 12, 0]]
    "voc21": [[0, 0, 15, 255], [1, 20, 255, 0], [7, 12, 12, 0]],
    "voc20": [[255, 255, 14, 255], [0, 19, 255, 255], [6, 11, 11, 255]],
    # stored [[0, 1, 59, 30], [0, 0, 45, 2], [58, 0, 0, 12]]
    "context60": [[0, 1, 59, 30], [0, 0, 45, 2], [58, 0, 0, 12]],
    "context59": [[255, 0, 58, 29], [255, 255, 44, 1], [57, 255, 255, 11]],
    # *_labelTrainIds.png / *_instanceTrainIds.png as stored
    "stuff171": [[0, 11, 79, 255], [80, 170, 39, 255], [10, 81, 0, 139]],
    "object": [[1, 12, 80, 0], [0, 0, 40, 0], [11, 0, 1, 0]],
    # labelIds [[0, 7, 9, 24], [26, 33, 34, 8], [11, 23, 17, 4]]
    "city": [[255, 0, 255, 11], [13, 18, 255, 1], [2, 10, 5, 255]],
    # stored [[0, 1, 150, 0], [12, 13, 0, 3], [150, 149, 2, 0]]
    "ade": [[255, 0, 149, 255], [11, 12, 255, 2], [149, 148, 1, 255]],
    # stored [[0, 11, 10, 3], [11, 5, 8, 1], [2, 4, 6, 9]]
    "camvid": [[0, 255, 10, 3], [255, 5, 8, 1], [2, 4, 6, 9]],
}
# cityscapesScripts helpers/labels.py, as presets.md quotes it; every other value -> 255.
CITYSCAPES_ID_TO_TRAINID = {
    0: 255, 1: 255, 2: 255, 3: 255, 4: 255, 5: 255, 6: 255,
    7: 0, 8: 1, 9: 255, 10: 255,
    11: 2, 12: 3, 13: 4, 14: 255, 15: 255, 16: 255,
    17: 5, 18: 255, 19: 6, 20: 7,
    21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 29: 255, 30: 255,
    31: 16, 32: 17, 33: 18,
}  # fmt: skip


def _write_label(path: Path, labels_hw: np.ndarray) -> None:
    Image.fromarray(labels_hw.astype(np.uint8)).save(path)


@pytest.mark.parametrize("name", NAMES)
def test_split_listed_in_order_with_its_files(tmp_path: Path, name: str) -> None:
    root = make_dataset(name, tmp_path)
    data_root = (root / DATA_ROOT_BELOW[name]).resolve()
    samples = layout(name).samples(str(root))
    assert [s.image_id for s in samples] == EXPECTED_IDS[name]
    image_template, truth_template = EXPECTED_FILES[name]
    for sample in samples:
        city = sample.image_id.split("_")[0]
        image = data_root / image_template.format(id=sample.image_id, city=city)
        truth = data_root / truth_template.format(id=sample.image_id, city=city)
        assert sample == Sample(sample.image_id, str(image), str(truth))
        assert os.path.isabs(sample.image) and os.path.isfile(sample.image)


@pytest.mark.parametrize("name", NAMES)
def test_limit_keeps_the_first(tmp_path: Path, name: str) -> None:
    root = str(make_dataset(name, tmp_path))
    reader = layout(name)
    assert [s.image_id for s in reader.samples(root, limit=2)] == EXPECTED_IDS[name][:2]
    assert reader.samples(root, limit=0) == []
    assert reader.samples(root, limit=99) == reader.samples(root)
    with pytest.raises(ValueError, match="at least 0"):
        reader.samples(root, limit=-1)


@pytest.mark.parametrize("name", NAMES)
def test_every_root_form_gives_the_same_split(tmp_path: Path, name: str) -> None:
    unpacked = make_dataset(name, tmp_path)
    reader = layout(name)
    expected = reader.samples(str(unpacked))
    for root in (unpacked / DATA_ROOT_BELOW[name], tmp_path, Path(f"{unpacked}/")):
        assert reader.data_root(str(root)) == str((unpacked / DATA_ROOT_BELOW[name]).resolve())
        assert reader.samples(str(root)) == expected


@pytest.mark.parametrize("name", NAMES)
def test_truth_decodes_as_hand_computed(tmp_path: Path, name: str) -> None:
    reader = layout(name)
    samples = reader.samples(str(make_dataset(name, tmp_path)))
    for i, sample in enumerate(samples):
        labels_hw = reader.truth(sample.truth)
        assert labels_hw.dtype == np.uint8 and labels_hw.shape == (H, W)
        np.testing.assert_array_equal(labels_hw, blocks_hw(EXPECTED_BLOCKS[name], i))
        valid = (labels_hw < reader.num_classes) | (labels_hw == 255)
        assert valid.all()


def test_voc_labels_are_palette_indices_not_colours(tmp_path: Path) -> None:
    sample = layout("voc21").samples(str(make_dataset("voc21", tmp_path)), limit=1)[0]
    with Image.open(sample.truth) as image:
        assert image.mode == "P"
        assert image.convert("RGB").getpixel((35, 5)) == (224, 224, 192)  # the 255 boundary
    assert layout("voc21").truth(sample.truth)[5, 35] == 255
    assert layout("voc20").truth(sample.truth)[5, 25] == 14  # stored 15 (person)


def test_cityscapes_label_ids_follow_the_official_table(tmp_path: Path) -> None:
    path = tmp_path / "x_gtFine_labelIds.png"
    _write_label(path, np.arange(256).reshape(16, 16))
    labels = layout("city").truth(str(path)).reshape(-1)
    assert {v: int(labels[v]) for v in range(34)} == CITYSCAPES_ID_TO_TRAINID
    assert set(labels[34:].tolist()) == {255}


def test_cityscapes_falls_back_to_mmseg_train_ids(tmp_path: Path) -> None:
    root = make_dataset("city", tmp_path)
    for path in root.glob("gtFine/val/*/*_gtFine_labelIds.png"):
        path.unlink()
    for i, sample in enumerate(layout("city").samples(str(root))):
        assert sample.truth.endswith(f"{sample.image_id}_gtFine_labelTrainIds.png")
        np.testing.assert_array_equal(
            layout("city").truth(sample.truth), blocks_hw(EXPECTED_BLOCKS["city"], i)
        )


@pytest.mark.parametrize(("name", "suffix"), [("stuff171", "_label"), ("object", "_instance")])
def test_coco_raw_maps_decode_as_the_converters_wrote(tmp_path: Path, name: str, suffix: str):
    root = make_dataset(name, tmp_path)
    for path in root.glob(f"annotations/val2017/*{suffix}TrainIds.png"):
        path.unlink()
    reader = layout(name)
    for i, sample in enumerate(reader.samples(str(root))):
        assert sample.truth == str(root / f"annotations/val2017/{sample.image_id}.png")
        np.testing.assert_array_equal(
            reader.truth(sample.truth), blocks_hw(EXPECTED_BLOCKS[name], i)
        )


def test_coco_raw_ids_number_the_used_categories_in_order(tmp_path: Path) -> None:
    unused = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]
    used = [v for v in range(182) if v not in unused]
    path = tmp_path / "000000000001.png"
    _write_label(path, np.array([[*used, 255]]))
    stuff = layout("stuff171").truth(str(path))[0]
    assert stuff.tolist() == [*range(171), 255]
    obj = layout("object").truth(str(path))[0]
    assert obj.tolist() == [*range(1, 81), *[0] * 91, 0]
    for value in (11, 90, 182):
        _write_label(path, np.array([[0, value]]))
        with pytest.raises(DatasetError, match=rf"values \[{value}\]"):
            layout("stuff171").truth(str(path))


def test_camvid_reads_other_splits_on_request(tmp_path: Path) -> None:
    root = str(make_dataset("camvid", tmp_path))
    camvid = layout("camvid")
    assert camvid.split == "test"
    val = camvid.samples(root, split="val")
    assert [s.image_id for s in val] == ["0016E5_07959", "0016E5_07961", "0016E5_07963"]
    assert val[0].truth.endswith("/CamVid/valannot/0016E5_07959.png")
    assert [s.image_id for s in camvid.samples(root, split="train")] == ["0001TP_006690"]
    assert [s.image_id for s in layout("voc21").samples(
        str(make_dataset("voc21", tmp_path)), split="train"
    )] == ["2007_000032"]  # fmt: skip


def test_unknown_split_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="training, validation"):
        layout("ade").samples(str(make_dataset("ade", tmp_path)), split="val")


def test_missing_layout_names_what_was_looked_for(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as caught:
        layout("voc21").samples(str(tmp_path))
    message = str(caught.value)
    assert "ImageSets/Segmentation/val.txt" in message
    assert f"{tmp_path}/VOCdevkit/VOC2012" in message and "VOCtrainval_11-May-2012" in message
    with pytest.raises(DatasetError, match="is not a folder"):
        layout("city").data_root(str(tmp_path / "nowhere"))


def test_context_without_the_converter_says_what_is_lacking(tmp_path: Path) -> None:
    root = make_dataset("context59", tmp_path)
    (root / "VOC2010/ImageSets/SegmentationContext/val.txt").unlink()
    with pytest.raises(DatasetError) as caught:
        layout("context59").samples(str(root))
    message = str(caught.value)
    assert f"{root}/VOC2010 lacks ImageSets/SegmentationContext/val.txt" in message
    assert "pascal_context.py" in message


def test_missing_label_file_is_named_not_skipped(tmp_path: Path) -> None:
    root = make_dataset("voc20", tmp_path)
    missing = root / "VOC2012/SegmentationClass/2007_000042.png"
    missing.unlink()
    with pytest.raises(DatasetError, match=str(missing)):
        layout("voc20").samples(str(root))
    assert len(layout("voc20").samples(str(root), limit=1)) == 1  # only kept samples checked


def test_missing_city_label_names_both_kinds(tmp_path: Path) -> None:
    root = make_dataset("city", tmp_path)
    for path in root.glob("gtFine/val/lindau/*_label*Ids.png"):
        path.unlink()
    with pytest.raises(DatasetError, match="lindau_000000_000576_gtFine_labelTrainIds.png"):
        layout("city").samples(str(root))


def test_split_file_listing_a_missing_image_is_an_error(tmp_path: Path) -> None:
    root = make_dataset("context60", tmp_path)
    (root / "VOC2010/JPEGImages/2008_000003.jpg").unlink()
    with pytest.raises(DatasetError, match="2008_000003.jpg is missing"):
        layout("context60").samples(str(root))


def test_labels_that_are_not_single_channel_are_refused(tmp_path: Path) -> None:
    sample = layout("voc21").samples(str(make_dataset("voc21", tmp_path)), limit=1)[0]
    with Image.open(sample.truth) as image:
        image.convert("RGB").save(sample.truth)
    with pytest.raises(DatasetError, match="is a RGB image"):
        layout("voc21").truth(sample.truth)
    sixteen_bit = tmp_path / "x_gtFine_labelIds.png"
    Image.fromarray(np.full((2, 2), 7, np.uint16)).save(sixteen_bit)
    with pytest.raises(DatasetError, match="single-channel"):
        layout("city").truth(str(sixteen_bit))


@pytest.mark.parametrize(
    ("name", "file_name", "value"),
    [
        ("voc21", "a.png", 21),
        ("voc20", "a.png", 21),
        ("context59", "a.png", 60),
        ("ade", "a.png", 151),
        ("camvid", "a.png", 12),
        ("object", "a_instanceTrainIds.png", 81),
        ("stuff171", "a_labelTrainIds.png", 171),
        ("city", "a_gtFine_labelTrainIds.png", 19),
    ],
)
def test_values_no_such_file_holds_are_refused(
    tmp_path: Path, name: str, file_name: str, value: int
) -> None:
    path = tmp_path / file_name
    _write_label(path, np.array([[0, 255, value]]))
    with pytest.raises(DatasetError, match=rf"holds values \[{value}\]"):
        layout(name).truth(str(path))


def test_object_keeps_a_stray_255_ignored(tmp_path: Path) -> None:
    path = tmp_path / "a_instanceTrainIds.png"
    _write_label(path, np.array([[0, 80, 255]]))
    assert layout("object").truth(str(path)).tolist() == [[0, 80, 255]]


def test_another_datasets_label_kind_is_refused(tmp_path: Path) -> None:
    root = make_dataset("stuff171", tmp_path)
    instance = root / "annotations/val2017/000000000139_instanceTrainIds.png"
    with pytest.raises(DatasetError, match=r"stuff171 reads \*_labelTrainIds.png or \*.png"):
        layout("stuff171").truth(str(instance))
    with pytest.raises(DatasetError, match="not object ground truth"):
        layout("object").truth(str(root / "annotations/val2017/000000000139_labelTrainIds.png"))


def test_layouts_and_their_class_counts() -> None:
    counts = {name: reader.num_classes for name, reader in LAYOUTS.items()}
    assert counts == {
        "voc21": 21,
        "voc20": 20,
        "context60": 60,
        "context59": 59,
        "stuff171": 171,
        "object": 81,
        "city": 19,
        "ade": 150,
        "camvid": 11,
    }
    assert all(reader.name == name for name, reader in LAYOUTS.items())
    with pytest.raises(ValueError, match="voc21, voc20, context60"):
        layout("cityscapes")
