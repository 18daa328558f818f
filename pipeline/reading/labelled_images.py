"""A run's labelled images as a PyTorch map-style dataset: ``(image, label map)`` pairs.

Read straight from the run's files: the index (one row per selected image: shard, id, uri,
size) from the ``summary/`` and ``annotations/`` Parquet tables when the dataset is made,
then per item the source image (decoded upright per EXIF, as the run saw it) and its label
map (the run's PNG with ``--png-labels``, else its COCO masks rasterised from
``annotations/``; each DataLoader worker keeps the rows of the last few shards it read). The
index is an Arrow table, shared copy-on-write by forked workers, so it works with a
``DataLoader`` of several workers. Images are the same samples every export holds
(:mod:`pipeline.exports.selection`), with the same filter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from pipeline.exports.selection import ClassPresent, Filter, RunLabels, SampleRecord, ShardRows
from pipeline.formats.images import decode
from pipeline.formats.storage import read_bytes
from pipeline.formats.tars import read_members, split_member

_CACHED_SHARDS = 4


class LabelledImages:
    """``(image, labels)`` for each labelled image of a run.

    Args:
        output: the run's output folder (local, ``file://`` or ``s3://``), finished or not
            (the shards finished when the dataset is made).
        transform: called as ``transform(image, labels)``; its result is the item. Without
            it the item is the pair itself.
        min_confidence, classes: the images kept, as ``jobs.export``'s flags of those names.

    Items (before ``transform``): ``image``, a ``3 x H x W`` uint8 tensor (RGB); ``labels``,
    an ``H x W`` int64 tensor of class indices (positions in :attr:`classes`), and
    :attr:`ignore_index` (255; 65535 beyond 255 classes) where no class was given.

    Raises:
        InputError: ``output`` holds no run, or no finished shard; unknown class names.
    """

    def __init__(
        self,
        output: str,
        transform: Callable[[Any, Any], Any] | None = None,
        min_confidence: float | None = None,
        classes: tuple[str, ...] | list[str] = (),
    ) -> None:
        self.transform = transform
        self.filter = Filter(min_confidence, tuple(classes))
        self._run = RunLabels(output)
        self._run.check(self.filter)
        self.classes: list[str] = self._run.class_names
        self.categories = self._run.categories
        self.ignore_index = int(self._run.unlabelled)
        self._index = self._build_index()
        self._shards: OrderedDict[int, ShardRows] = OrderedDict()

    def __len__(self) -> int:
        return self._index.num_rows

    def record(self, index: int) -> SampleRecord:
        """The ``index``-th image's record (id, uri, size, no classes)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        row = self._index.slice(index % len(self), 1).to_pylist()[0]
        classes: tuple[ClassPresent, ...] = ()
        return SampleRecord(
            row["shard"], row["image_id"], row["uri"], row["height"], row["width"], classes
        )

    def __getitem__(self, index: int) -> Any:
        import torch

        record = self.record(index)
        image_hwc = decode(_source_bytes(record.uri), max_pixels=None)
        labels_hw = self._run.label_map(record, self._rows(record.shard))
        image = torch.from_numpy(image_hwc).permute(2, 0, 1).contiguous()
        labels = torch.from_numpy(labels_hw.astype("int64"))
        if self.transform is not None:
            return self.transform(image, labels)
        return image, labels

    def _build_index(self) -> pa.Table:
        records = [
            record
            for shard in self._run.shards
            for record in self._run.rows(shard, self.filter).records
        ]
        id_type = pa.int64() if self._run.integer_ids else pa.string()
        return pa.table(
            {
                "shard": pa.array([r.shard for r in records], pa.int32()),
                "image_id": pa.array([r.image_id for r in records], id_type),
                "uri": pa.array([r.uri for r in records], pa.string()),
                "height": pa.array([r.height for r in records], pa.int32()),
                "width": pa.array([r.width for r in records], pa.int32()),
            }
        )

    def _rows(self, shard: int) -> ShardRows:
        """The shard's masks, for runs without PNG label maps (a few shards cached)."""
        if self._run.png_labels:
            return ShardRows([])
        if shard not in self._shards:
            self._shards[shard] = self._run.rows(shard, self.filter, with_masks=True)
            while len(self._shards) > _CACHED_SHARDS:
                self._shards.popitem(last=False)
        self._shards.move_to_end(shard)
        return self._shards[shard]


def _source_bytes(uri: str) -> bytes:
    """An image's bytes: its file, or its member of a tar (read forward to it)."""
    member = split_member(uri)
    if member is None:
        return read_bytes(uri)
    [(_, data)] = list(read_members(member[0], [member[1]]))
    if isinstance(data, Exception):
        raise data
    return data
