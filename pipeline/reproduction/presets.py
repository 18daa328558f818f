"""The research repos' evaluation protocols, per benchmark, as named presets.

Values are read off the configs of SCLIP (wangf3014/SCLIP @ b56bd30), ClearCLIP (mc-lan/ClearCLIP
@ ad68a40) and NACLIP (sinahmr/NACLIP @ 0cac3a6), which all evaluate with mmsegmentation 1.1.1:
resize to a short side (``Resize(scale=(2048, S), keep_ratio=True)``), slide inference,
``softmax(logit_scale * cos)``, and on benchmarks with a background class, pixels whose best
class probability is under ``prob_thd`` become background. Their class-name files ship in
``names/`` byte for byte (CamVid, which none of them evaluates, has names of our choosing).

Published numbers are mIoU in percent, ViT-B/16 with OpenAI weights, each with its source.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

PROTOCOLS = ("sclip", "clearclip", "naclip")
DATASETS = (
    "voc21",
    "voc20",
    "context60",
    "context59",
    "stuff171",
    "object",
    "city",
    "ade",
    "camvid",
)
WITH_BACKGROUND = frozenset({"voc21", "context60", "object"})
WHOLE_IMAGE = 2048  # a window no image side exceeds: NACLIP's whole-image inference on VOC

_NAME_FILES = {
    "voc21": "cls_voc21.txt",
    "voc20": "cls_voc20.txt",
    "context60": "cls_context60.txt",
    "context59": "cls_context59.txt",
    "stuff171": "cls_coco_stuff.txt",
    "object": "cls_coco_object.txt",
    "city": "cls_city_scapes.txt",
    "ade": "cls_ade20k.txt",
    "camvid": "cls_camvid.txt",
}
# ClearCLIP's own files differ in these three: plain "background", "person", "tvmonitor".
_CLEARCLIP_NAMES = frozenset({"voc21", "voc20", "object"})

# (short side, crop, stride, logit scale, prob_thd) per protocol; dataset entries override.
_DEFAULTS = {
    "sclip": (336, 224, 112, 40.0, 0.1),
    "clearclip": (448, 448, 224, 50.0, 0.0),
    "naclip": (336, 224, 112, 40.0, 0.1),
}
_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    "sclip": {
        "voc21": {"logit_scale": 65.0},  # SCLIP's area_thd=0.1 on VOC21 is not reproduced
        "context60": {"logit_scale": 50.0},
        "object": {"logit_scale": 50.0},
        "stuff171": {"short_side": 448},
        "city": {"short_side": 560},
    },
    "clearclip": {
        "voc21": {"threshold": 0.5},
        "context60": {"threshold": 0.15},
        "object": {"threshold": 0.4},
        "city": {"crop": 224, "stride": 224},
    },
    "naclip": {
        "voc21": {"crop": WHOLE_IMAGE, "stride": WHOLE_IMAGE},
        "voc20": {"crop": WHOLE_IMAGE, "stride": WHOLE_IMAGE},
        "city": {"short_side": 560},
    },
}
_SOURCES = {
    "sclip": "SCLIP configs/cfg_*.py (wangf3014/SCLIP @ b56bd30)",
    "clearclip": "ClearCLIP configs/cfg_*.py (mc-lan/ClearCLIP @ ad68a40)",
    "naclip": "NACLIP configs/cfg_*.py (sinahmr/NACLIP @ 0cac3a6); its README runs PAMR (--pamr)",
}

_ALL = ("voc21", "context60", "object", "voc20", "context59", "stuff171", "city", "ade")
PUBLISHED: dict[str, tuple[tuple[str, dict[str, float]], ...]] = {
    "sclip": (
        (
            "SCLIP README",
            dict(zip(_ALL, (59.63, 31.74, 33.52, 81.54, 34.46, 22.77, 32.34, 16.45), strict=True)),
        ),
        (
            "peer table of docs/gclip-method.md",
            {"voc20": 80.4, "context59": 34.2, "stuff171": 22.4, "city": 32.2, "ade": 16.1},
        ),
    ),
    "naclip": (
        (
            "NACLIP README, PAMR on",
            dict(zip(_ALL, (64.07, 34.99, 36.19, 83.03, 38.35, 25.69, 38.27, 19.05), strict=True)),
        ),
        (
            "peer table of docs/gclip-method.md, no PAMR",
            {"voc20": 79.7, "context59": 35.2, "stuff171": 23.3, "city": 35.5, "ade": 17.4},
        ),
    ),
    "clearclip": (
        (
            "ClearCLIP README (paper appendix table 2)",
            {"voc20": 80.9, "context59": 35.9, "stuff171": 23.9, "city": 30.0, "ade": 16.7},
        ),
    ),
    "gclip": (
        (
            "GCLIP paper, as docs/gclip-method.md quotes it",
            {"stuff171": 24.8, "city": 33.7, "ade": 18.5},
        ),
    ),
}


@dataclass(frozen=True, slots=True)
class Preset:
    """How one benchmark is run and scored under one research repo's protocol.

    Attributes:
        dataset: the benchmark (:data:`DATASETS`).
        protocol: whose configs the values come from (:data:`PROTOCOLS`).
        names: the class-name file's text: one class per line, synonyms after ``,``; on
            benchmarks with background, the first line lists background concepts.
        background: the first class is background; pixels under ``threshold`` become it.
        short_side, crop, stride, logit_scale: inference, as ``gclip.InferenceConfig``.
        threshold: ``prob_thd`` (benchmarks with background), else ``None``.
        pamr: PAMR refinement (off in every preset; NACLIP's README numbers use it).
        source: where the values were read.
    """

    dataset: str
    protocol: str
    names: str = field(repr=False)
    background: bool
    short_side: int
    crop: int
    stride: int
    logit_scale: float
    threshold: float | None
    pamr: bool = False
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def inference(self) -> dict[str, Any]:
        """The ``inference`` settings of a labelling run under this preset."""
        keys = ("short_side", "crop", "stride", "logit_scale", "pamr")
        return {k: getattr(self, k) for k in keys}


def preset(dataset: str, protocol: str) -> Preset:
    """The preset of ``dataset`` under ``protocol``.

    Raises:
        ValueError: an unknown dataset or protocol, naming the known ones.
    """
    if dataset not in DATASETS:
        raise ValueError(f"Unknown dataset {dataset!r}; known: {', '.join(DATASETS)}.")
    if protocol not in PROTOCOLS:
        raise ValueError(f"Unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}.")
    short_side, crop, stride, logit_scale, threshold = _DEFAULTS[protocol]
    values: dict[str, Any] = {
        "short_side": short_side,
        "crop": crop,
        "stride": stride,
        "logit_scale": logit_scale,
        "threshold": threshold if dataset in WITH_BACKGROUND else None,
    }
    values.update(_OVERRIDES[protocol].get(dataset, {}))
    folder = "clearclip/" if protocol == "clearclip" and dataset in _CLEARCLIP_NAMES else ""
    names = resources.files("pipeline.reproduction") / "names" / f"{folder}{_NAME_FILES[dataset]}"
    source = _SOURCES[protocol] if dataset != "camvid" else "our choice: no repo evaluates CamVid"
    return Preset(
        dataset,
        protocol,
        names.read_text(encoding="utf-8"),
        dataset in WITH_BACKGROUND,
        source=source,
        **values,
    )


def default_protocol(method: str) -> str:
    """A peer runs under its own repo's protocol; the others under ClearCLIP's, beside whose
    numbers GCLIP reports its own (and the library's default inference)."""
    return method if method in PROTOCOLS else "clearclip"


def published(method: str, dataset: str) -> list[dict[str, Any]]:
    """The published mIoU (percent) of ``method`` on ``dataset``, one entry per source."""
    return [
        {"source": source, "miou_percent": table[dataset]}
        for source, table in PUBLISHED.get(method, ())
        if dataset in table
    ]
