"""gclip: training-free open-vocabulary semantic segmentation on open_clip ViTs.

Typical use::

    import gclip
    segmenter = gclip.load_segmenter("ViT-B-16-quickgelu", pretrained="openai", method="gclip")
    vocabulary = gclip.parse_text("background\\nroad, street\\ncar\\nperson, pedestrian")
    [result] = segmenter.segment([image_hwc_uint8], vocabulary)
    result.labels_hw, result.confidence_hw

Configs, vocabularies and the model catalog import without torch (a driver validates a run
with them: ``model_depth``, ``check_weights`` and ``describe_weights`` answer before any model
is built; only checking an open_clip pretrained tag imports open_clip, hence torch); the model
side (``Segmenter``, ``load_segmenter``, ``load_model``) imports torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gclip.catalog import DEMO_MODEL, model_depth
from gclip.config import (
    METHOD_SPECS,
    METHODS,
    InferenceConfig,
    MethodConfig,
    MethodSpec,
    ShippedSettings,
    method_spec,
)
from gclip.vocabulary import (
    UNLABELLED,
    Vocabulary,
    VocabularyClass,
    VocabularyError,
    load_vocabulary,
    parse_json,
    parse_text,
)
from gclip.weights import (
    WeightsCheck,
    WeightsSource,
    WeightsUnavailableError,
    check_weights,
    describe_weights,
)

if TYPE_CHECKING:
    from gclip.loading import CheckpointError, LoadedModel, load_model
    from gclip.segmenter import Segmentation, Segmenter, load_segmenter

_LAZY = {
    "CheckpointError": "gclip.loading",
    "LoadedModel": "gclip.loading",
    "load_model": "gclip.loading",
    "Segmentation": "gclip.segmenter",
    "Segmenter": "gclip.segmenter",
    "load_segmenter": "gclip.segmenter",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gclip' has no attribute {name!r}")


__all__ = [
    "DEMO_MODEL",
    "METHODS",
    "METHOD_SPECS",
    "UNLABELLED",
    "CheckpointError",
    "InferenceConfig",
    "LoadedModel",
    "MethodConfig",
    "MethodSpec",
    "Segmentation",
    "Segmenter",
    "ShippedSettings",
    "Vocabulary",
    "VocabularyClass",
    "VocabularyError",
    "WeightsCheck",
    "WeightsSource",
    "WeightsUnavailableError",
    "check_weights",
    "describe_weights",
    "load_model",
    "load_segmenter",
    "load_vocabulary",
    "method_spec",
    "model_depth",
    "parse_json",
    "parse_text",
]
