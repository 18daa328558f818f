"""mmsegmentation's folder layout: ``img_dir/{train,val}/KEY.<ext>``, ``ann_dir/{train,val}/KEY.png``.

Images are the source bytes under their own suffix; annotations are the label maps (value =
class index, 255 ignored: mmseg's default ``ignore_index``; 65535 in 16-bit maps beyond 255
classes). An image goes to ``val`` when a hash of ``--seed`` and its id falls under
``--val-fraction``: the split of an image never depends on which others were selected.
``dataset.py`` beside them registers a dataset class with the classes and palette, and the
dataloader settings that read these folders.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.exports.parts import ExportOptions, PartMarker
from pipeline.exports.samples import Sample, sample_key, source_extension
from pipeline.exports.selection import ImageId, RunLabels
from pipeline.formats.storage import Storage

log = logging.getLogger(__name__)
SPLITS = ("train", "val")
DATASET_FILE = "dataset.py"


def split_of(image_id: ImageId, val_fraction: float, seed: int) -> str:
    """``val`` for about ``val_fraction`` of ids (a hash of ``seed`` and the id), else ``train``."""
    digest = hashlib.sha256(f"{seed}:{json.dumps(image_id)}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if draw < val_fraction else "train"


@dataclass(slots=True)
class _FilesPart:
    storage: Storage
    options: ExportOptions

    def add(self, sample: Sample) -> int:
        assert sample.data is not None, "mmseg parts copy the source bytes"
        record = sample.record
        split = split_of(record.image_id, self.options.val_fraction, self.options.seed)
        key = sample_key(record.image_id)
        extension = source_extension(record.uri, sample.data)
        self.storage.write_atomic(f"img_dir/{split}/{key}.{extension}", sample.data)
        self.storage.write_atomic(f"ann_dir/{split}/{key}.png", sample.label_png)
        return len(sample.data) + len(sample.label_png)


class MmsegFormat:
    name = "mmseg"
    needs_bytes = True

    def check(self, run: RunLabels, options: ExportOptions) -> None:
        return None

    @contextlib.contextmanager
    def part(
        self, storage: Storage, index: int, run: RunLabels, options: ExportOptions
    ) -> Iterator[_FilesPart]:
        yield _FilesPart(storage, options)  # each file is written atomically as it comes

    def finish(
        self, storage: Storage, run: RunLabels, markers: list[PartMarker], options: ExportOptions
    ) -> list[str]:
        suffixes: Counter[str] = Counter()
        for split in SPLITS:
            suffixes.update("." + p.rsplit(".", 1)[1] for p in storage.list(f"img_dir/{split}"))
        suffix = suffixes.most_common(1)[0][0] if suffixes else ".jpg"
        if len(suffixes) > 1:
            log.warning(
                "images of several suffixes (%s): mmseg reads one img_suffix, %s in %s; "
                "convert the others or filter them out",
                dict(suffixes),
                suffix,
                DATASET_FILE,
            )
        root = storage.root if "://" in storage.root else os.path.abspath(storage.root)
        text = dataset_snippet(list(run.categories), root, suffix, run.unlabelled)
        storage.write_atomic(DATASET_FILE, text.encode())
        return [DATASET_FILE, "img_dir", "ann_dir"]


def dataset_snippet(
    categories: list[dict[str, Any]], root: str, img_suffix: str, ignore_index: int
) -> str:
    """``dataset.py``: a registered dataset class and the dataloaders of this export."""
    classes = tuple(c["name"] for c in categories)
    palette = [list(c.get("color", (0, 0, 0))) for c in categories]
    loaders = "\n".join(
        f"""{split}_dataloader = dict(
    batch_size={4 if split == "train" else 1},
    num_workers=2,
    sampler=dict(type="{"InfiniteSampler" if split == "train" else "DefaultSampler"}", shuffle={split == "train"}),
    dataset=dict(
        type="GclipLabelDataset",
        data_root=data_root,
        data_prefix=dict(img_path="img_dir/{split}", seg_map_path="ann_dir/{split}"),
        pipeline={split}_pipeline,
    ),
)"""
        for split in SPLITS
    )
    return f'''"""Written by python -m jobs.export --format mmseg: this export as an mmsegmentation 1.x
dataset. Import it from a config (custom_imports) or copy the class and settings into one;
fill train_pipeline / val_pipeline with your transforms."""

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS


@DATASETS.register_module()
class GclipLabelDataset(BaseSegDataset):
    METAINFO = dict(
        classes={classes!r},
        palette={palette!r},
    )

    def __init__(self, img_suffix={img_suffix!r}, seg_map_suffix=".png", **kwargs):
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=False,
            ignore_index={ignore_index},
            **kwargs,
        )


data_root = {root!r}
train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
val_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
{loaders}
'''
