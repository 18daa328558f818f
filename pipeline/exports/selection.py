"""Which images of a run an export holds, and each one's labels, shard by shard.

A run's *samples* are its images with at least one labelled pixel: those with rows in the
``summary/`` table (an image none of whose pixels got a class has nothing to train on, and no
mean confidence to filter on). A :class:`Filter` keeps the images whose summary rows pass it.
Per finished shard, in the run's order (shard, then manifest row), :class:`RunLabels` gives

* the :class:`SampleRecord`: image id, uri (resolved as the run read it), size, the classes
  present with their pixel share and mean confidence (the summary's own figures);
* the label map: the run's PNG (``--png-labels``), else its COCO masks (``annotations/``
  ``counts``) rasterised, the last annotation of a pixel winning as in the COCO files.

Memory holds one shard's summary and annotation rows at a time, whatever the run's size.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from gclip.vocabulary import label_format, parse_json
from pipeline.errors import InputError
from pipeline.formats.coco import annotation_mask
from pipeline.formats.coco import categories as coco_categories
from pipeline.formats.layout import annotation_table_path, label_path, summary_table_path
from pipeline.formats.progress import read_progress
from pipeline.formats.run_record import RunRecord, require_run
from pipeline.formats.shard_files import read_coco
from pipeline.formats.storage import Storage

ImageId = str | int
_SUMMARY_COLUMNS = ["image_id", "category_id", "pixel_fraction", "mean_confidence"]
_IMAGE_COLUMNS = ["image_id", "uri", "height", "width"]


@dataclass(frozen=True, slots=True)
class Filter:
    """Which images to keep, decided on the ``summary/`` rows alone.

    Attributes:
        min_confidence: keep images whose mean confidence (pixel-weighted over their classes,
            as the report ranks them) is at least this; ``None``: any.
        classes: keep images in which at least one of these class names covers a pixel;
            empty: any.
    """

    min_confidence: float | None = None
    classes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"min_confidence": self.min_confidence, "classes": list(self.classes)}

    def keeps(self, mean_confidence: float, names: set[str]) -> bool:
        if self.min_confidence is not None and mean_confidence < self.min_confidence:
            return False
        return not self.classes or not names.isdisjoint(self.classes)


@dataclass(frozen=True, slots=True)
class ClassPresent:
    """A class that covers pixels of one image.

    Attributes:
        index: its label value (position in the vocabulary).
        id, name: its COCO category id and name.
        pixel_share: fraction of the image's pixels labelled with it, in (0, 1].
        mean_confidence: mean confidence over those pixels, in [0, 1].
    """

    index: int
    id: int
    name: str
    pixel_share: float
    mean_confidence: float

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "pixel_share": self.pixel_share,
            "mean_confidence": self.mean_confidence,
        }


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """One selected image, as the run's tables describe it (no pixel read).

    Attributes:
        shard: the run's shard that labelled it.
        uri: where its bytes are (a relative manifest uri already resolved).
        height, width: its label map's size (the image upright per EXIF, as labelled).
        classes: the classes present, in label-value order.
    """

    shard: int
    image_id: ImageId
    uri: str
    height: int
    width: int
    classes: tuple[ClassPresent, ...]

    @property
    def mean_confidence(self) -> float:
        """Pixel-weighted mean confidence of the labelled pixels."""
        return weighted_confidence(self.classes)


def weighted_confidence(classes: tuple[ClassPresent, ...]) -> float:
    """The mean confidence of an image's labelled pixels: its classes' mean confidences
    weighted by their pixel shares (how the report ranks its review queue)."""
    weight = sum(c.pixel_share for c in classes)
    return sum(c.pixel_share * c.mean_confidence for c in classes) / weight


@dataclass(slots=True)
class ShardRows:
    """One shard's selected records and what their label maps are made from."""

    records: list[SampleRecord]
    masks: dict[ImageId, list[tuple[int, str]]] = field(default_factory=dict)


class RunLabels:
    """A finished (or running) run opened for reading its samples.

    Args:
        output: the run's output folder (local, ``file://`` or ``s3://``).
        shards: the shards to read; default every finished shard now.

    Raises:
        InputError: ``output`` holds no run, or no finished shard.
    """

    def __init__(self, output: str, shards: list[int] | None = None) -> None:
        self.output = output
        self.storage = Storage(output, create=False)
        self.run: RunRecord = require_run(self.storage)
        vocabulary = parse_json(self.run["vocabulary"])
        self.categories: tuple[dict[str, Any], ...] = tuple(coco_categories(vocabulary))
        self.index_of = {c["id"]: i for i, c in enumerate(self.categories)}
        self.dtype, self.unlabelled = label_format(len(self.categories))
        self.png_labels = bool(self.run.config.get("png_labels"))
        self.shards = read_progress(self.storage).done_shards if shards is None else shards
        if not self.shards:
            raise InputError(
                f"{output} holds no finished shard yet: wait for the run (python -m jobs.status "
                f"{output}) and export again."
            )

    @functools.cached_property
    def integer_ids(self) -> bool:
        """Whether the manifest's ids are integers (else strings), from a table's schema."""
        data = self.storage.read(summary_table_path(self.shards[0]))
        return bool(pa.types.is_integer(pq.read_schema(io.BytesIO(data)).field("image_id").type))

    @property
    def class_names(self) -> list[str]:
        return [c["name"] for c in self.categories]

    def check(self, chosen: Filter) -> None:
        """:class:`InputError` naming the problem if ``chosen`` cannot select anything."""
        unknown = sorted(set(chosen.classes) - set(self.class_names))
        if unknown:
            raise InputError(
                f"--classes {', '.join(unknown)}: not in the run's vocabulary; give names of "
                f"{', '.join(self.class_names)}"
            )
        if chosen.min_confidence is not None and not 0 <= chosen.min_confidence <= 1:
            raise InputError(f"--min-confidence {chosen.min_confidence}: give a value in [0, 1]")

    def rows(self, shard: int, chosen: Filter, with_masks: bool = False) -> ShardRows:
        """Shard ``shard``'s selected records in manifest order; with ``with_masks`` (and no
        PNG label maps) the ``(label value, counts)`` of each one's annotations too."""
        summary = self._table(summary_table_path(shard), _SUMMARY_COLUMNS)
        present = self._present(summary, chosen)
        if not present:
            return ShardRows([])
        columns = _IMAGE_COLUMNS + (["category_id", "counts"] if with_masks else [])
        annotations = self._table(annotation_table_path(shard), columns).to_pylist()
        where = {row["image_id"]: row for row in annotations}
        if any(image_id not in where for image_id in present):
            # --instances: a thing class whose every component is under --min-area has
            # summary rows but no annotation; its image record is in the COCO file.
            for image in read_coco(self.storage, shard)["images"]:
                row = {"uri": image["file_name"], **image}
                where.setdefault(image["image_id"], row)
        records = [
            SampleRecord(
                shard,
                image_id,
                where[image_id]["uri"],
                int(where[image_id]["height"]),
                int(where[image_id]["width"]),
                classes,
            )
            for image_id, classes in present.items()
        ]
        masks: dict[ImageId, list[tuple[int, str]]] = {}
        if with_masks and not self.png_labels:
            for row in annotations:
                index = self.index_of[row["category_id"]]
                masks.setdefault(row["image_id"], []).append((index, row["counts"]))
        return ShardRows(records, masks)

    def count(self, shard: int, chosen: Filter) -> int:
        """How many images of ``shard`` ``chosen`` keeps (its summary rows alone are read)."""
        return len(self._present(self._table(summary_table_path(shard), _SUMMARY_COLUMNS), chosen))

    def label_png(self, record: SampleRecord) -> bytes:
        """The run's PNG label map of ``record`` (runs made with ``--png-labels``)."""
        return self.storage.read(label_path(record.image_id))

    def label_map(self, record: SampleRecord, rows: ShardRows) -> np.ndarray:
        """``H x W`` label values of ``record`` (uint8, 255 unlabelled; uint16, 65535, over
        255 classes): its PNG, else its masks rasterised."""
        if self.png_labels:
            return decode_label_png(self.label_png(record))
        labels_hw = np.full((record.height, record.width), self.unlabelled, self.dtype)
        for value, counts in rows.masks.get(record.image_id, []):
            segmentation = {
                "segmentation": {"size": [record.height, record.width], "counts": counts}
            }
            labels_hw[annotation_mask(segmentation, (record.height, record.width))] = value
        return labels_hw

    def _present(
        self, summary: pa.Table, chosen: Filter
    ) -> dict[ImageId, tuple[ClassPresent, ...]]:
        """Per image kept by ``chosen``, in row order: its classes in label-value order."""
        by_image: dict[ImageId, list[ClassPresent]] = {}
        for row in summary.to_pylist():
            category = self.categories[self.index_of[row["category_id"]]]
            by_image.setdefault(row["image_id"], []).append(
                ClassPresent(
                    self.index_of[row["category_id"]],
                    row["category_id"],
                    category["name"],
                    row["pixel_fraction"],
                    row["mean_confidence"],
                )
            )
        kept = {}
        for image_id, classes in by_image.items():
            ordered = tuple(sorted(classes, key=lambda c: c.index))
            if chosen.keeps(weighted_confidence(ordered), {c.name for c in ordered}):
                kept[image_id] = ordered
        return kept

    def _table(self, relative: str, columns: list[str]) -> pa.Table:
        return pq.read_table(io.BytesIO(self.storage.read(relative)), columns=columns)


def decode_label_png(data: bytes) -> np.ndarray:
    """``H x W`` label values of a label PNG (indexed 8-bit, or 16-bit greyscale)."""
    with Image.open(io.BytesIO(data)) as image:
        labels_hw = np.asarray(image)
    return labels_hw.astype(np.uint16) if labels_hw.dtype != np.uint8 else labels_hw


def encode_label_png(labels_hw: np.ndarray, colors: list[list[int]]) -> bytes:
    """A label PNG as the run writes them: indexed 8-bit with the class colours as palette,
    or 16-bit greyscale (uint16 maps)."""
    buffer = io.BytesIO()
    if labels_hw.dtype == np.uint16:
        Image.fromarray(np.ascontiguousarray(labels_hw)).save(buffer, format="PNG")
        return buffer.getvalue()
    image = Image.fromarray(np.ascontiguousarray(labels_hw, dtype=np.uint8), mode="P")
    palette = [0] * (256 * 3)
    for index, color in enumerate(colors):
        palette[3 * index : 3 * index + 3] = color
    image.putpalette(palette)
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def iterate_records(run: RunLabels, chosen: Filter) -> Iterator[SampleRecord]:
    """Every selected record of the run, shard by shard."""
    for shard in run.shards:
        yield from run.rows(shard, chosen).records
