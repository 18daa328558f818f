"""Label Studio tasks: per image its URL and one prediction of ``brushlabels`` masks.

Label Studio's COCO importer reads boxes and polygons, not RLE masks, so masks go in as
predictions in its own brush RLE (:mod:`pipeline.exports.brush_rle`), one result per class
present, scored with the class's mean confidence; the prediction's score is the image's.
Files: ``tasks.json`` (every task, one JSON list, for *Import*), ``tasks/tasks-NNNNNN.json``
(the same tasks by part: import them one by one for very large runs) and
``labeling_config.xml`` (an ``<Image>`` and ``<BrushLabels>`` with the vocabulary's classes
and colours: paste it as the project's labelling interface). Tasks follow
``schemas/labelstudio_task.schema.json``.

An image's URL is ``--image-url-prefix`` joined with its id (percent-encoded), else its
``uri`` when that is ``http(s)://`` or ``s3://`` (Label Studio reads s3 through a cloud
storage connection); a local file without a prefix is refused with the fix.
"""

from __future__ import annotations

import contextlib
import json
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO
from xml.sax.saxutils import quoteattr

from pipeline.errors import InputError
from pipeline.exports import brush_rle
from pipeline.exports.parts import ExportOptions, PartMarker
from pipeline.exports.samples import Sample
from pipeline.exports.selection import Filter, RunLabels, SampleRecord, iterate_records
from pipeline.formats.storage import Storage, resolve

TASKS, CONFIG = "tasks.json", "labeling_config.xml"
FROM_NAME, TO_NAME = "label", "image"
_REMOTE = ("http://", "https://", "s3://")
_OPEN, _CLOSE = b"[\n", b"\n]\n"  # around a part's tasks
_CHUNK = 8 << 20


def part_name(index: int) -> str:
    return f"tasks/tasks-{index:06d}.json"


def image_url(record: SampleRecord, prefix: str | None) -> str:
    """Where Label Studio loads the image from (see the module's docstring)."""
    if prefix:
        return f"{prefix.rstrip('/')}/{urllib.parse.quote(str(record.image_id))}"
    if record.uri.startswith(_REMOTE):
        return record.uri
    raise InputError(
        f"image {record.image_id!r} is a local file ({record.uri}), which Label Studio cannot "
        "load: serve the image folder and give its URL as --image-url-prefix (e.g. "
        "http://localhost:8080/data/local-files/?d=images with Label Studio's local files "
        "storage), or label images from http(s):// or s3:// uris"
    )


def task(
    sample: Sample, prefix: str | None, model_version: str, names: list[str]
) -> dict[str, Any]:
    """One task: the image and a prediction with a ``brushlabels`` result per class present."""
    record = sample.record
    results = [
        {
            "id": f"{record.shard}-{n}",
            "from_name": FROM_NAME,
            "to_name": TO_NAME,
            "type": "brushlabels",
            "original_width": record.width,
            "original_height": record.height,
            "image_rotation": 0,
            "score": present.mean_confidence,
            "value": {
                "format": "rle",
                "rle": brush_rle.encode(sample.labels_hw == present.index),
                "brushlabels": [names[present.index]],
            },
        }
        for n, present in enumerate(record.classes)
    ]
    return {
        "data": {TO_NAME: image_url(record, prefix), "image_id": record.image_id},
        "predictions": [
            {"model_version": model_version, "score": record.mean_confidence, "result": results}
        ],
    }


def labeling_config(categories: list[dict[str, Any]]) -> str:
    """The project's labelling interface: the image and a brush label per class."""
    labels = "\n".join(
        f"    <Label value={quoteattr(c['name'])} background={quoteattr(_hex(c))}/>"
        for c in categories
    )
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}" zoom="true"/>\n'
        f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n'
        f"{labels}\n"
        "  </BrushLabels>\n"
        "</View>\n"
    )


def _hex(category: dict[str, Any]) -> str:
    red, green, blue = category.get("color", (255, 0, 255))
    return f"#{red:02x}{green:02x}{blue:02x}"


@dataclass(slots=True)
class _TasksPart:
    stream: BinaryIO
    prefix: str | None
    model_version: str
    names: list[str]
    count: int = 0

    def add(self, sample: Sample) -> int:
        data = json.dumps(task(sample, self.prefix, self.model_version, self.names)).encode()
        self.stream.write((b",\n" if self.count else b"") + data)
        self.count += 1
        return len(data)


class LabelStudioFormat:
    name = "labelstudio"
    needs_bytes = False

    def check(self, run: RunLabels, options: ExportOptions) -> None:
        """Refuse local images without a prefix before any work (the first image tells)."""
        if options.image_url_prefix:
            return
        first = next(iterate_records(run, Filter()), None)
        if first is not None:
            image_url(first, None)

    @contextlib.contextmanager
    def part(
        self, storage: Storage, index: int, run: RunLabels, options: ExportOptions
    ) -> Iterator[_TasksPart]:
        version = f"gclip-label {(run.run.fingerprint or '')[:12]}".strip()
        with storage.open_atomic(part_name(index)) as stream:
            stream.write(_OPEN)
            yield _TasksPart(stream, options.image_url_prefix, version, run.class_names)
            stream.write(_CLOSE)

    def finish(
        self, storage: Storage, run: RunLabels, markers: list[PartMarker], options: ExportOptions
    ) -> list[str]:
        with storage.open_atomic(TASKS) as stream:
            stream.write(b"[\n")
            first = True
            for marker in markers:
                if marker.samples:
                    stream.write(b"" if first else b",\n")
                    _copy_tasks(storage, part_name(marker.index), stream)
                    first = False
            stream.write(b"\n]\n")
        storage.write_atomic(CONFIG, labeling_config(list(run.categories)).encode())
        return [TASKS, CONFIG, *(part_name(m.index) for m in markers)]


def _copy_tasks(storage: Storage, relative: str, stream: BinaryIO) -> None:
    """Copy the tasks of a part file (``[\n`` tasks ``\n]\n``) into ``stream``, in chunks."""
    fs, path = resolve(storage.uri(relative))
    with fs.open_input_file(path) as handle:
        end = handle.size() - len(_CLOSE)
        handle.seek(len(_OPEN))
        while handle.tell() < end:
            stream.write(handle.read(min(_CHUNK, end - handle.tell())))
