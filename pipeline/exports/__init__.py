"""Exports of a run for training and review: WebDataset, mmsegmentation, Hugging Face
``datasets``, Label Studio (``python -m jobs.export``).

Every format reads the same samples (:mod:`pipeline.exports.selection`: the images with a
labelled pixel that a :class:`Filter` on the ``summary/`` table keeps), in the same order,
and writes them in resumable parts (:mod:`pipeline.exports.parts`).
"""

from __future__ import annotations

from pipeline.exports.hf import HfFormat
from pipeline.exports.labelstudio import LabelStudioFormat
from pipeline.exports.mmseg import MmsegFormat
from pipeline.exports.parts import ExportFormat, ExportOptions, ExportSummary, export
from pipeline.exports.selection import Filter, RunLabels
from pipeline.exports.webdataset import WebDatasetFormat

FORMATS: dict[str, ExportFormat] = {
    f.name: f for f in (WebDatasetFormat(), MmsegFormat(), HfFormat(), LabelStudioFormat())
}


def export_run(
    output: str,
    format_name: str,
    dest: str,
    chosen: Filter | None = None,
    options: ExportOptions | None = None,
    progress: bool = True,
) -> ExportSummary:
    """Export run ``output`` to ``dest`` in format ``format_name`` (a key of :data:`FORMATS`),
    resuming an interrupted export of the same settings there.

    Raises:
        InputError: no run, no finished shard, bad settings, or ``dest`` holds an export of
            other settings.
    """
    return export(
        RunLabels(output),
        FORMATS[format_name],
        dest,
        chosen or Filter(),
        options or ExportOptions(),
        progress,
    )


__all__ = ["FORMATS", "ExportOptions", "ExportSummary", "Filter", "RunLabels", "export_run"]
