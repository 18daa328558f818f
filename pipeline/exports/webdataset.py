"""WebDataset tars: per image ``KEY.<ext>`` (the source bytes), ``KEY.label.png``, ``KEY.json``.

Written with the standard library's ``tarfile`` rather than ``webdataset.TarWriter``: the
library is then needed only to read, and every header is fixed (mtime 0, owner 0, mode 0644),
so a part written again after an interruption has the same bytes. ``KEY`` is
:func:`pipeline.exports.samples.sample_key` (flat, no dots); ``KEY.json`` follows
``schemas/export_sample.schema.json``. Tars are ``shard-NNNNNN.tar``, one per part.
"""

from __future__ import annotations

import contextlib
import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from pipeline.exports.parts import ExportOptions, PartMarker
from pipeline.exports.samples import Sample, sample_key, source_extension
from pipeline.exports.selection import RunLabels
from pipeline.formats.storage import Storage


def tar_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def sample_json(sample: Sample, categories: list[dict[str, Any]]) -> dict[str, Any]:
    """``KEY.json``: the image's id, its label map's size, classes present, the category table."""
    record = sample.record
    return {
        "image_id": record.image_id,
        "uri": record.uri,
        "height": record.height,
        "width": record.width,
        "classes": [c.to_json() for c in record.classes],
        "mean_confidence": record.mean_confidence,
        "categories": categories,
    }


@dataclass(slots=True)
class _TarPart:
    archive: tarfile.TarFile
    categories: list[dict[str, Any]]

    def add(self, sample: Sample) -> int:
        assert sample.data is not None, "webdataset parts copy the source bytes"
        key = sample_key(sample.record.image_id)
        document = json.dumps(sample_json(sample, self.categories)).encode()
        members = (
            (f"{key}.{source_extension(sample.record.uri, sample.data)}", sample.data),
            (f"{key}.label.png", sample.label_png),
            (f"{key}.json", document),
        )
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            self.archive.addfile(info, io.BytesIO(data))
        return sum(len(data) for _, data in members)


class WebDatasetFormat:
    name = "webdataset"
    needs_bytes = True

    def check(self, run: RunLabels, options: ExportOptions) -> None:
        return None

    @contextlib.contextmanager
    def part(
        self, storage: Storage, index: int, run: RunLabels, options: ExportOptions
    ) -> Iterator[_TarPart]:
        with storage.open_atomic(tar_name(index)) as stream:
            yield from _tar_part(stream, list(run.categories))

    def finish(
        self, storage: Storage, run: RunLabels, markers: list[PartMarker], options: ExportOptions
    ) -> list[str]:
        return [tar_name(m.index) for m in markers]


def _tar_part(stream: BinaryIO, categories: list[dict[str, Any]]) -> Iterator[_TarPart]:
    # "w|": a stream, written forward (object stores take it part by part).
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.PAX_FORMAT) as archive:
        yield _TarPart(archive, categories)
