"""What a run's image becomes in FiftyOne, computed without FiftyOne: its figures from the
``summary/`` rows, safe field names for its classes, boxes and masks as FiftyOne holds them,
and a local path for its media.

Pure functions (local media apart, which may download, and a shard's embeddings, read), importable and tested without the
``fiftyone`` extra; :mod:`pipeline.reading.fiftyone_dataset` builds the samples from them.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from pipeline.errors import InputError
from pipeline.formats.shard_files import read_embeddings
from pipeline.formats.storage import Storage, read_bytes

ImageId = str | int
_LOCAL_SCHEMES = ("", "file")


@dataclass(frozen=True, slots=True)
class ImageStats:
    """An image's figures, from its rows of the run's ``summary/`` tables.

    Attributes:
        mean_confidence: pixel-weighted mean of the classes' mean confidences,
            ``sum(f * c) / sum(f)``, in [0, 1]; ``None`` when no pixel was given a class.
        labelled_fraction: share of the image's pixels given a class, in [0, 1].
        class_shares: class name -> share of the image's pixels, classes present only.
    """

    mean_confidence: float | None
    labelled_fraction: float
    class_shares: Mapping[str, float]


NO_LABELS = ImageStats(None, 0.0, {})


def image_stats(rows: Iterable[Mapping[str, Any]]) -> dict[ImageId, ImageStats]:
    """Per image, its :class:`ImageStats` from ``summary/`` rows (``image_id``, ``category``,
    ``pixel_fraction``, ``mean_confidence``); rows of one class add up. Images without rows
    have no entry (:data:`NO_LABELS`)."""
    shares: dict[ImageId, dict[str, float]] = defaultdict(dict)
    weighted: dict[ImageId, float] = defaultdict(float)
    for row in rows:
        image, fraction = row["image_id"], float(row["pixel_fraction"])
        shares[image][row["category"]] = shares[image].get(row["category"], 0.0) + fraction
        weighted[image] += fraction * float(row["mean_confidence"])
    stats = {}
    for image, per_class in shares.items():
        total = sum(per_class.values())
        mean = weighted[image] / total if total > 0 else None
        stats[image] = ImageStats(mean, min(total, 1.0), per_class)
    return stats


def share_field_names(names: Sequence[str]) -> dict[str, str]:
    """A field of ``class_shares`` per class name: lower-case ASCII letters, digits and ``_``,
    never starting with ``_`` or a digit (FiftyOne and MongoDB accept it, and the App's
    filters and ``F("class_shares.<field>")`` need no quoting), unique across ``names``."""
    fields: dict[str, str] = {}
    taken: set[str] = set()
    for index, name in enumerate(names):
        base = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "class"
        base = f"c_{base}" if base[0].isdigit() else base
        candidate, suffix = base, index
        while candidate in taken:
            candidate, suffix = f"{base}_{suffix}", suffix + 1
        taken.add(candidate)
        fields[name] = candidate
    return fields


def normalised_box(bbox_xywh: Sequence[float], width: int, height: int) -> list[float]:
    """A COCO box (pixels, top-left x, y, width, height) as FiftyOne's ``bounding_box``: the
    same box in fractions of the image's width and height, in [0, 1]."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    return [x / width, y / height, w / width, h / height]


def box_mask(mask_hw: np.ndarray, bbox_xywh: Sequence[float]) -> np.ndarray:
    """The part of an image-sized bool mask inside a COCO box (at least one pixel), as a
    FiftyOne ``Detection.mask`` holds it: ``round(h) x round(w)`` bool."""
    x, y, w, h = (float(v) for v in bbox_xywh)
    x0, y0 = round(x), round(y)
    x1, y1 = max(x0 + 1, round(x + w)), max(y0 + 1, round(y + h))
    return np.asarray(mask_hw[y0:y1, x0:x1], dtype=bool)


def local_media(uri: str, media_dir: str | None) -> str:
    """The local path FiftyOne shows for an image of the run.

    Local paths and ``file://`` URIs resolve against the current directory and must exist;
    other URIs are downloaded into ``media_dir`` once (named by a hash of the URI, so two
    images of one name do not collide), or refused when it is ``None``.

    Raises:
        InputError: a local image is missing, or a remote one has no ``media_dir``.
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() in _LOCAL_SCHEMES or len(parts.scheme) == 1:
        path = os.path.abspath(uri.removeprefix("file://"))
        if not os.path.isfile(path):
            raise InputError(
                f"Image {uri} is not at {path}: run this from the folder the labelling job "
                "ran in (relative URIs are read against the current directory), or put the "
                "images back where the run read them."
            )
        return path
    if media_dir is None:
        raise InputError(
            f"FiftyOne shows local images only, and {uri} is not local: pass --media-dir DIR "
            "to download the run's images there (kept for later loads)."
        )
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    path = os.path.join(
        os.path.abspath(media_dir), f"{digest}-{posixpath.basename(parts.path) or 'image'}"
    )
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(temporary, "wb") as handle:
            handle.write(read_bytes(uri))
        os.replace(temporary, path)  # a killed download never leaves a partial image
    return path


def shard_vectors(storage: Storage, index: int) -> dict[Any, np.ndarray]:
    """Shard ``index``'s embeddings by manifest image id (none if it has no ``embeddings/``
    file: a shard kept from before ``--embeddings`` under ``--allow-config-change``)."""
    embeddings = read_embeddings(storage, index)
    if embeddings is None:
        return {}
    return dict(zip(embeddings.image_ids, embeddings.embedding_nd, strict=True))
