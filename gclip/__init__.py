"""gclip: training-free open-vocabulary semantic segmentation on open_clip ViTs.

Typical use::

    import gclip
    loaded = gclip.load_model("ViT-B-16-quickgelu", pretrained="openai")
    segmenter = gclip.Segmenter.from_open_clip(loaded.model, loaded.tokenizer, method="gclip")
    vocabulary = gclip.parse_text("background\\nroad, street\\ncar\\nperson, pedestrian")
    [result] = segmenter.segment([image_hwc_uint8], vocabulary)
    result.labels_hw, result.confidence_hw
"""

from gclip.inference import InferenceConfig
from gclip.loading import DEMO_MODEL, LoadedModel, WeightsUnavailableError, load_model
from gclip.methods import METHODS, MethodConfig
from gclip.segmenter import Segmentation, Segmenter
from gclip.vocabulary import (
    UNLABELLED,
    Vocabulary,
    VocabularyClass,
    VocabularyError,
    load_vocabulary,
    parse_json,
    parse_text,
)

__all__ = [
    "DEMO_MODEL",
    "METHODS",
    "UNLABELLED",
    "InferenceConfig",
    "LoadedModel",
    "MethodConfig",
    "Segmentation",
    "Segmenter",
    "Vocabulary",
    "VocabularyClass",
    "VocabularyError",
    "WeightsUnavailableError",
    "load_model",
    "load_vocabulary",
    "parse_json",
    "parse_text",
]
