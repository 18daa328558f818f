"""A Hugging Face ``datasets`` dataset saved to disk, loadable with ``datasets.load_from_disk``.

Columns: ``image_id``, ``image`` (``Image``: the source bytes), ``label`` (``Image``: the label
PNG, value = class index), ``classes`` (a list of ``ClassLabel``: the classes present, whose
names are the run's class names in label-value order, so
``dataset.features["classes"].feature.names[v]`` names label value ``v``) and
``mean_confidence``. ``dataset.info.description`` holds the run's category table as JSON.

Each part is one Arrow stream file ``data-NNNNNN.arrow``, the layout ``save_to_disk`` writes;
``state.json`` and ``dataset_info.json`` list them once every part is in place. ``datasets``
is imported only here (an optional dependency).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pyarrow as pa

from pipeline.exports.parts import ExportOptions, PartMarker
from pipeline.exports.samples import Sample
from pipeline.exports.selection import RunLabels
from pipeline.formats.storage import Storage

_ROWS_PER_BATCH = 32


def arrow_name(index: int) -> str:
    return f"data-{index:06d}.arrow"


def features_of(run: RunLabels) -> Any:
    """The dataset's ``datasets.Features``."""
    import datasets

    id_type = "int64" if run.integer_ids else "string"
    listing = getattr(datasets, "List", None) or datasets.Sequence
    return datasets.Features(
        {
            "image_id": datasets.Value(id_type),
            "image": datasets.Image(),
            "label": datasets.Image(),
            "classes": listing(datasets.ClassLabel(names=run.class_names)),
            "mean_confidence": datasets.Value("float64"),
        }
    )


@dataclass(slots=True)
class _ArrowPart:
    features: Any
    writer: pa.ipc.RecordBatchStreamWriter
    rows: list[dict[str, Any]] = field(default_factory=list)

    def add(self, sample: Sample) -> int:
        assert sample.data is not None, "hf parts copy the source bytes"
        record = sample.record
        image_id = record.image_id
        if self.features["image_id"].dtype == "string":
            image_id = str(image_id)
        row = {
            "image_id": image_id,
            "image": {"bytes": sample.data, "path": None},
            "label": {"bytes": sample.label_png, "path": None},
            "classes": [c.index for c in record.classes],
            "mean_confidence": record.mean_confidence,
        }
        self.rows.append(self.features.encode_example(row))
        if len(self.rows) == _ROWS_PER_BATCH:
            self.flush()
        return len(sample.data) + len(sample.label_png)

    def flush(self) -> None:
        if self.rows:
            schema = self.features.arrow_schema
            self.writer.write_batch(pa.RecordBatch.from_pylist(self.rows, schema=schema))
            self.rows = []


class HfFormat:
    name = "hf"
    needs_bytes = True

    def check(self, run: RunLabels, options: ExportOptions) -> None:
        features_of(run)  # ImportError without datasets: the job names the extra

    @contextlib.contextmanager
    def part(
        self, storage: Storage, index: int, run: RunLabels, options: ExportOptions
    ) -> Iterator[_ArrowPart]:
        features = features_of(run)
        with storage.open_atomic(arrow_name(index)) as stream:
            yield from _arrow_part(stream, features)

    def finish(
        self, storage: Storage, run: RunLabels, markers: list[PartMarker], options: ExportOptions
    ) -> list[str]:
        names = [arrow_name(m.index) for m in markers]
        if not names:  # nothing selected: one empty file, so that the dataset still loads
            names = [arrow_name(0)]
            with self.part(storage, 0, run, options):
                pass
        fingerprint = hashlib.sha256(
            json.dumps([m.to_json() for m in markers] + [run.run.fingerprint]).encode()
        ).hexdigest()[:16]
        state: dict[str, Any] = {
            "_data_files": [{"filename": name} for name in names],
            "_fingerprint": fingerprint,
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": None,
        }
        info = {
            "citation": "",
            "description": json.dumps({"categories": list(run.categories)}),
            "features": features_of(run).to_dict(),
            "homepage": "",
            "license": "",
        }
        storage.write_atomic("dataset_info.json", json.dumps(info, indent=2).encode())
        storage.write_atomic("state.json", json.dumps(state, indent=2, sort_keys=True).encode())
        return [*names, "dataset_info.json", "state.json"]


def _arrow_part(stream: BinaryIO, features: Any) -> Iterator[_ArrowPart]:
    with pa.ipc.new_stream(stream, features.arrow_schema) as writer:
        part = _ArrowPart(features, writer)
        yield part
        part.flush()
