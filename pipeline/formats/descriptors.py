"""The descriptors of work that cross the rooms: a shard, and an image's manifest row.

The planner makes them (:mod:`pipeline.planning.plan`), the ledger stores shards
(:mod:`pipeline.formats.ledger`), workers read images by them. Plain records, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.formats.layout import shard_name


@dataclass(frozen=True, slots=True)
class Shard:
    """A unit of work: ``count`` rows of ``file`` from ``start``.

    Attributes:
        index: the shard's number, which names its files.
        file: the manifest file (a location :func:`pipeline.formats.storage.resolve` reads).
        start: first row, in the file.
        count: rows.
        first_id: COCO image id of the first row; row ``k`` gets ``first_id + k``.
        digest: sha256 of the rows' image ids (:mod:`pipeline.planning.ids`).
    """

    index: int
    file: str
    start: int
    count: int
    first_id: int
    digest: str

    @property
    def name(self) -> str:
        return shard_name(self.index)


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One manifest row that a worker needs.

    Attributes:
        coco_id: the image's COCO id in the run (an integer; COCO files call it ``id``, and
            their annotations ``image_id``).
        image_id: the manifest's id of the image (a string or an integer), as every table of
            ours names it.
        uri: where the image is read (a relative manifest uri already resolved).
        tar_offset: for a tar member (``uri`` ``<tar>#<member>``), the byte offset of its
            header in the tar, where a read of it may start (:mod:`pipeline.formats.tars`).
    """

    coco_id: int
    image_id: str | int
    uri: str
    width: int | None = None
    height: int | None = None
    sha256: str | None = None
    tar_offset: int | None = None
