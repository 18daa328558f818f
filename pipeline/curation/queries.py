"""Query embeddings, made by the run's own model so they compare with its image embeddings.

The model is the one ``run.json`` records (``config.model``, ``config.pretrained``, the
method as resolved), built as a labelling worker builds it
(:class:`pipeline.running.recipe.SegmenterSpec`), so a checkpoint's shipped prompt templates
apply. A text is embedded exactly as a vocabulary name is (:class:`gclip.text.TextEncoder`:
every template rendered, encoded, normalised, averaged, normalised again); an image by
``Segmenter.image_embeddings``, as ``jobs.label --embeddings`` wrote the run's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from gclip.config import MethodConfig, build
from pipeline.errors import InputError
from pipeline.formats.images import decode
from pipeline.formats.run_record import require_run
from pipeline.formats.storage import Storage, read_bytes

if TYPE_CHECKING:
    import gclip


def run_segmenter(output: str, device: str = "auto") -> gclip.Segmenter:
    """The run's segmenter, built from ``run.json`` (loads the model: seconds)."""
    from pipeline.running.recipe import SegmenterSpec  # no Ray: the worker's recipe only

    run = require_run(Storage(output, create=False))
    config = run.config
    method = build(MethodConfig, run.method)
    return SegmenterSpec(config["model"], config.get("pretrained"), method, device)()


def text_query(segmenter: gclip.Segmenter, text: str) -> np.ndarray:
    """``D`` float32, L2-normalised: ``text`` through the segmenter's prompt ensemble."""
    if not text.strip():
        raise InputError("The search text is empty: give words to search for.")
    return np.asarray(segmenter.text.embed_names([text.strip()])[0].cpu().numpy(), np.float32)


def image_query(segmenter: gclip.Segmenter, uri: str) -> np.ndarray:
    """``D`` float32, L2-normalised: the image at ``uri`` (local path, ``s3://``, ``http(s)``).

    Raises:
        InputError: the image cannot be read or decoded.
    """
    try:
        image_hwc = decode(read_bytes(uri))
    except (OSError, ValueError) as err:
        raise InputError(f"--image {uri}: cannot read it as an image ({err}).") from err
    return np.asarray(segmenter.image_embeddings([image_hwc])[0], np.float32)
