"""COCO output for semantic pseudo-labels (the COCO-Stuff layout), or instances.

Per image, one annotation per predicted category: the union mask as RLE, ``area`` and ``bbox``
from pycocotools, ``iscrowd: 0`` and a ``score`` (mean confidence over the mask). With
instances, a thing category gives one such annotation per connected component instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from gclip import Vocabulary
from gclip.vocabulary import VocabularyClass, label_format
from pipeline.formats.instances import instances


def categories(vocabulary: Vocabulary) -> list[dict[str, Any]]:
    """COCO category records, in vocabulary order."""
    return [
        {
            "id": c.id,
            "name": c.name,
            "synonyms": list(c.names[1:]),
            "supercategory": _supercategory(c),
            "isthing": int(c.is_thing),
            "color": list(color),
        }
        for c, color in zip(vocabulary.classes, vocabulary.colors(), strict=True)
    ]


@dataclass(frozen=True, slots=True)
class ClassRegion:
    """All pixels of one class in one image (what the ``summary/`` rows describe).

    Attributes:
        category_id: the class's id.
        pixels: its pixel count.
        mean_confidence: mean confidence over those pixels.
    """

    category_id: int
    pixels: int
    mean_confidence: float


@dataclass(frozen=True, slots=True)
class EncodedImage:
    """One image's annotations (without ``id``: numbered per COCO file) and class regions."""

    annotations: list[dict[str, Any]]
    regions: list[ClassRegion]


def encode_annotations(
    labels_hw: np.ndarray,
    confidence_hw: np.ndarray,
    vocabulary: Vocabulary,
    image_id: int,
    min_instance_area: int | None = None,
) -> EncodedImage:
    """Annotations of the classes present in ``labels_hw`` (class indices; 255 unlabelled, or
    65535 in the uint16 maps of vocabularies over 255 classes).

    Args:
        labels_hw: ``H x W`` class indices.
        confidence_hw: ``H x W`` float32, the chosen class's probability.
        vocabulary: the classes.
        image_id: the COCO image id.
        min_instance_area: ``None``: one annotation per class (its union mask). Else thing
            classes give one annotation per connected component of at least this many
            pixels (:func:`pipeline.formats.instances.instances`), stuff and background
            classes still one.

    Returns:
        The annotations, and per class present its region (the whole class, however split).
    """
    annotations, regions = [], []
    _, unlabelled = vocabulary.label_format
    # One pass counts every class's pixels (and finds those present, in index order).
    pixels = np.bincount(labels_hw.ravel(), minlength=unlabelled + 1)  # per label value
    for index in np.flatnonzero(pixels[:unlabelled]):
        category = vocabulary.classes[int(index)]
        mask_hw = labels_hw == index
        score = float(confidence_hw[mask_hw].mean())
        regions.append(ClassRegion(category.id, int(pixels[index]), score))
        if min_instance_area is None or not category.is_thing:
            annotations.append(_annotation(mask_hw.astype(np.uint8), score, category.id, image_id))
            continue
        for instance in instances(mask_hw, min_instance_area):
            own_score = float(confidence_hw[instance.box_yx][instance.mask_box].mean())
            full_hw = instance.mask(mask_hw.shape, order="F")
            annotations.append(_annotation(full_hw, own_score, category.id, image_id))
    return EncodedImage(annotations, regions)


def _annotation(
    mask_hw: np.ndarray, score: float, category_id: int, image_id: int
) -> dict[str, Any]:
    """The COCO annotation of one ``H x W`` uint8 mask: RLE, area and bbox from pycocotools."""
    rle = mask_utils.encode(np.asfortranarray(mask_hw))
    return {
        "image_id": image_id,
        "category_id": category_id,
        # counts decoded to str: JSON cannot hold bytes
        "segmentation": {
            "size": [int(s) for s in rle["size"]],
            "counts": rle["counts"].decode("ascii"),
        },
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": 0,
        "score": score,
    }


def _supercategory(c: VocabularyClass) -> str:
    return "background" if c.is_background else "object" if c.is_thing else "stuff"


def decode_label_map(
    annotations: list[dict[str, Any]], size_hw: tuple[int, int], category_to_index: dict[int, int]
) -> np.ndarray:
    """Rebuild an ``H x W`` label map (class indices; unlabelled elsewhere: 255 in uint8, or
    65535 in uint16 for more than 255 categories) from annotations."""
    dtype, unlabelled = label_format(len(category_to_index))
    labels = np.full(size_hw, unlabelled, dtype)
    for ann in annotations:
        labels[annotation_mask(ann, size_hw)] = category_to_index[ann["category_id"]]
    return labels


class CocoLabelMaps:
    """Label maps decoded from a COCO file's annotations, image by image.

    Args:
        coco: a COCO dict (``images``, ``annotations``, ``categories``).
        category_to_index: category id -> label value; default the position of each category
            in ``coco["categories"]``. Annotations of other categories are skipped.
    """

    def __init__(
        self, coco: dict[str, Any], category_to_index: dict[int, int] | None = None
    ) -> None:
        self.category_to_index = category_to_index or {
            c["id"]: i for i, c in enumerate(coco["categories"])
        }
        self._by_image: dict[Any, list[dict[str, Any]]] = {}
        for ann in coco["annotations"]:
            if ann["category_id"] in self.category_to_index:
                self._by_image.setdefault(ann["image_id"], []).append(ann)

    def label_map(self, image: dict[str, Any]) -> np.ndarray:
        """``H x W`` uint8 labels of a COCO image record (255 where nothing is annotated)."""
        annotations = self._by_image.get(image["id"], [])
        return decode_label_map(
            annotations, (image["height"], image["width"]), self.category_to_index
        )


def annotation_mask(annotation: dict[str, Any], size_hw: tuple[int, int]) -> np.ndarray:
    """``H x W`` bool mask of an annotation: polygons, uncompressed or compressed RLE."""
    h, w = size_hw
    segmentation = annotation["segmentation"]
    if isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w))
    elif isinstance(segmentation["counts"], list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segmentation, h, w)
    else:
        rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return np.asarray(mask_utils.decode(rle), dtype=bool)
