"""The rows of a manifest to be, as the listing of SOURCEs makes them (jobs.manifest).

:mod:`pipeline.planning.sources` lists files, :mod:`pipeline.planning.tar_sources` tar
members; :mod:`pipeline.planning.probe` fills sizes and hashes; the writer
(:mod:`pipeline.planning.manifest_writer`) turns them into the Parquet manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.errors import InputError


class SourceError(InputError):
    """A SOURCE cannot be listed, or its rows collide; the message names them and the fix."""


@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One image of a manifest to be; ``origin`` (the SOURCE, and a line or index) is for
    messages only and is not written.

    Attributes:
        key: a tar member's WebDataset key (:func:`pipeline.formats.tars.webdataset_key`).
        tar_offset: a tar member's header offset in its tar, in bytes.
        extra: ``(column, value)`` pairs written as further columns (an img2dataset
            Parquet's, joined on ``key``).
    """

    image_id: str
    uri: str
    origin: str
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    key: str | None = None
    tar_offset: int | None = None
    extra: tuple[tuple[str, Any], ...] = ()
