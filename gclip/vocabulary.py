"""Vocabularies: classes with synonyms, an optional background class, and thresholds.

Two forms are read. Plain text, as the research repos' ``cls_*.txt`` files: one class per line,
synonyms separated by ``,`` or ``;``, ``#`` comments and blank lines ignored. JSON, validated by
``schemas/vocabulary.schema.json``::

    {"classes": [{"id": 7, "name": "road", "synonyms": ["street"], "threshold": 0.3,
                  "color": [128, 64, 128], "isthing": false},
                 {"id": 8, "name": "car"},
                 {"id": 0, "name": "background", "synonyms": ["sky", "wall"], "background": true}],
     "threshold": 0.4}

Label maps hold the class *index* (its position in ``classes``): uint8 with 255 for unlabelled
pixels up to 255 classes, uint16 with 65535 for unlabelled beyond (up to 65,534 classes).
Output files carry the class ``id``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import schemas

UNLABELLED = 255  # in uint8 label maps; see label_format() for large vocabularies
UNLABELLED_16 = 65535
MAX_CLASSES = 65534  # indices 0..65533 in a uint16 label map; 65535 marks unlabelled pixels
_SYNONYM_SPLIT = re.compile(r"\s*[,;]\s*")


class VocabularyError(ValueError):
    """A vocabulary is empty, malformed or ambiguous; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class VocabularyClass:
    """One output class.

    Attributes:
        id: category id written to outputs (COCO ``category_id``).
        names: the class name first, then its synonyms; each is prompted separately.
        threshold: minimum probability for a pixel to keep this label, else unlabelled.
        color: RGB colour for previews.
        is_background: the class stands for background.
        is_stuff: an amorphous region (road, sky, grass): one mask per image, never split
            into instances (JSON ``"isthing": false``).
    """

    id: int
    names: tuple[str, ...]
    threshold: float | None = None
    color: tuple[int, int, int] | None = None
    is_background: bool = False
    is_stuff: bool = False

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def is_thing(self) -> bool:
        """A countable object (COCO ``isthing``): neither stuff nor background."""
        return not (self.is_stuff or self.is_background)


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """An ordered set of classes, the unit for which text embeddings are computed and cached.

    Attributes:
        classes: the classes; a label map value is an index into this tuple.
        threshold: default minimum probability for classes without their own threshold;
            ``None`` labels every pixel with its most probable class.
        below_threshold: what pixels below their class's threshold become: ``unlabelled``
            (255 / 65535), or ``background``, the first background class (as the research
            repos score benchmarks with background: ``prob_thd``).
        repeated_names: a name may belong to several classes, as in some research class
            files (``bed`` is both a background concept and a class in SCLIP's
            ``cls_coco_object.txt``); a pixel such a name wins goes to the first of them.
            Refused by default: a repeated name is usually a mistake.
    """

    classes: tuple[VocabularyClass, ...]
    threshold: float | None = None
    below_threshold: str = "unlabelled"
    repeated_names: bool = False

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def names(self) -> tuple[str, ...]:
        """Every prompt name, class by class, in order: the rows of the text embedding."""
        return tuple(name for cls in self.classes for name in cls.names)

    @property
    def name_to_class(self) -> tuple[int, ...]:
        """For each entry of :attr:`names`, the index of its class."""
        return tuple(i for i, cls in enumerate(self.classes) for _ in cls.names)

    @property
    def label_format(self) -> tuple[np.dtype[Any], int]:
        """``(dtype, unlabelled value)`` of this vocabulary's label maps (see
        :func:`label_format`)."""
        return label_format(len(self.classes))

    @property
    def below_threshold_label(self) -> int:
        """The label value of pixels below their class's threshold."""
        if self.below_threshold == "background":
            return next(i for i, c in enumerate(self.classes) if c.is_background)
        return self.label_format[1]

    @property
    def thresholds(self) -> tuple[float | None, ...]:
        return tuple(
            c.threshold if c.threshold is not None else self.threshold for c in self.classes
        )

    def colors(self) -> list[tuple[int, int, int]]:
        """Per-class RGB colours, deterministic for a vocabulary.

        A class's own ``color`` wins. Else a non-background class whose name holds exactly
        one basic colour word (``"blue square"``) gets a shade of that colour, the n-th such
        class of a colour the n-th shade; every other class keeps the fixed palette at its
        index, so a ``blue`` class is never drawn magenta.
        """
        shades_used: dict[str, int] = {}
        colors = []
        for index, cls in enumerate(self.classes):
            word = None if cls.is_background else _colour_word(cls.name)
            if cls.color is not None:
                colors.append(cls.color)
            elif word is None:
                colors.append(_palette(index))
            else:
                colors.append(_shade(word, shades_used.get(word, 0)))
                shades_used[word] = shades_used.get(word, 0) + 1
        return colors

    def to_json(self) -> dict[str, Any]:
        """The JSON form (valid under ``vocabulary.schema.json``)."""
        classes = []
        for c in self.classes:
            item: dict[str, Any] = {"id": c.id, "name": c.name, "synonyms": list(c.names[1:])}
            if c.threshold is not None:
                item["threshold"] = c.threshold
            if c.color is not None:
                item["color"] = list(c.color)
            if c.is_background:
                item["background"] = True
            if c.is_stuff:
                item["isthing"] = False
            classes.append(item)
        out: dict[str, Any] = {"classes": classes}
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.below_threshold != "unlabelled":
            out["below_threshold"] = self.below_threshold
        if self.repeated_names:
            out["repeated_names"] = True
        return out

    @property
    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form: equal vocabularies hash equally."""
        canonical = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def label_format(num_classes: int) -> tuple[np.dtype[Any], int]:
    """``(uint8, 255)`` for label maps of up to 255 classes, ``(uint16, 65535)`` beyond."""
    if num_classes <= UNLABELLED:
        return np.dtype(np.uint8), UNLABELLED
    return np.dtype(np.uint16), UNLABELLED_16


def parse_text(
    text: str,
    background_first_line: bool = False,
    threshold: float | None = None,
    repeated_names: bool = False,
) -> Vocabulary:
    """Parse the plain-text form: one class per line, synonyms separated by ``,`` or ``;``.

    Args:
        text: file contents.
        background_first_line: the first class line lists background concepts (the
            ``cls_voc21.txt`` convention). A class named ``background`` is background anyway.
        threshold: vocabulary-wide minimum probability (see :class:`Vocabulary`).
        repeated_names: a name may belong to several classes (see :class:`Vocabulary`).

    Returns:
        A vocabulary whose class ids are 1, 2, ... in line order.
    """
    classes: list[VocabularyClass] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        names = tuple(n for n in _SYNONYM_SPLIT.split(line) if n)
        if not names:
            raise VocabularyError(f"Line {line_no} ({raw!r}) holds no class name.")
        is_background = names[0].lower() == "background" or (background_first_line and not classes)
        classes.append(
            VocabularyClass(id=len(classes) + 1, names=names, is_background=is_background)
        )
    return Vocabulary(tuple(classes), threshold, repeated_names=repeated_names)


def parse_json(data: Mapping[str, Any]) -> Vocabulary:
    """Parse the JSON form after validating it against ``vocabulary.schema.json``."""
    try:
        schemas.validate(data, "vocabulary")
    except schemas.SchemaError as err:
        raise VocabularyError(f"Invalid JSON vocabulary: {err}") from err
    classes = tuple(
        VocabularyClass(
            id=int(c["id"]),
            names=(c["name"], *c.get("synonyms", [])),
            threshold=c.get("threshold"),
            color=tuple(c["color"]) if "color" in c else None,
            is_background=bool(c.get("background", False)),
            is_stuff=not c.get("isthing", True),
        )
        for c in data["classes"]
    )
    return Vocabulary(
        classes=classes,
        threshold=data.get("threshold"),
        below_threshold=data.get("below_threshold", "unlabelled"),
        repeated_names=data.get("repeated_names", False),
    )


def load_vocabulary(
    path: str | Path, background_first_line: bool = False, threshold: float | None = None
) -> Vocabulary:
    """Read a vocabulary file: ``.json`` in the JSON form, anything else as plain text.

    ``threshold`` overrides the file's vocabulary-wide threshold when given.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise VocabularyError(f"Vocabulary file {path} does not exist.") from err
    except (OSError, UnicodeDecodeError) as err:
        raise VocabularyError(f"Cannot read vocabulary file {path} as UTF-8 text: {err}") from err
    if path.suffix.lower() != ".json":
        return parse_text(text, background_first_line=background_first_line, threshold=threshold)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise VocabularyError(f"Vocabulary file {path} is not valid JSON: {err}") from err
    vocabulary = parse_json(data)
    if threshold is not None:
        vocabulary = dataclasses.replace(vocabulary, threshold=threshold)
    return vocabulary


def _validate(vocabulary: Vocabulary) -> None:
    classes = vocabulary.classes
    if not classes:
        raise VocabularyError("The vocabulary is empty: give at least one class, one per line.")
    if len(classes) > MAX_CLASSES:
        raise VocabularyError(
            f"The vocabulary has {len(classes)} classes; at most {MAX_CLASSES} fit a uint16 label "
            "map with 65535 reserved for unlabelled. Split it into several runs."
        )
    seen_ids: dict[int, str] = {}
    seen_names: dict[str, str] = {}
    for cls in classes:
        if cls.id in seen_ids:
            raise VocabularyError(
                f"Class id {cls.id} is used by both {seen_ids[cls.id]!r} and {cls.name!r}."
            )
        seen_ids[cls.id] = cls.name
        for name in cls.names:
            if not name.strip():
                raise VocabularyError(f"Class {cls.name!r} has an empty synonym.")
            key = name.strip().lower()
            if key in seen_names and not vocabulary.repeated_names:
                raise VocabularyError(
                    f"The name {name!r} appears twice (in {seen_names[key]!r} and {cls.name!r}); "
                    "each name must belong to exactly one class."
                )
            seen_names[key] = cls.name
    if vocabulary.below_threshold not in ("unlabelled", "background"):
        raise VocabularyError(
            f"below_threshold is 'unlabelled' or 'background', not {vocabulary.below_threshold!r}."
        )
    if vocabulary.below_threshold == "background" and not any(c.is_background for c in classes):
        raise VocabularyError(
            "below_threshold 'background' needs a background class: flag one with "
            '"background": true (or name it background).'
        )
    for value in (vocabulary.threshold, *(c.threshold for c in classes)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise VocabularyError(f"Thresholds are probabilities in [0, 1]; got {value}.")


def _colour_word(name: str) -> str | None:
    """The one basic colour a class name names (``"Blue-square"`` -> ``"blue"``), else None:
    no colour word, or two different ones (``"red and blue"``)."""
    words = {_COLOUR_ALIASES.get(w, w) for w in re.findall(r"[a-z]+", name.lower())}
    found = words & _COLOUR_BASES.keys()
    return found.pop() if len(found) == 1 else None


def _shade(word: str, n: int) -> tuple[int, int, int]:
    """The ``n``-th shade of a basic colour: the base, then alternately darker and lighter,
    each step closer to (never reaching) 70 % black or white so the hue stays readable."""
    base = np.array(_COLOUR_BASES[word], np.float64)
    if n == 0:
        return _rgb(base)
    # Black can only lighten and white only darken; the rest alternate, darker first.
    if word in ("black", "white"):
        darker, level = word == "white", n
    else:
        darker, level = n % 2 == 1, (n + 1) // 2
    amount = 0.7 * (1 - 0.5**level)
    target = np.zeros(3) if darker else np.full(3, 255.0)
    return _rgb(base + amount * (target - base))


def _rgb(values: np.ndarray) -> tuple[int, int, int]:
    r, g, b = (round(float(v)) for v in values)
    return r, g, b


# Recognisable, mutually distinct base shades; the demo world's shape colours are near these.
_COLOUR_BASES: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (235, 205, 30),
    "green": (40, 170, 60),
    "cyan": (30, 200, 210),
    "blue": (40, 80, 225),
    "purple": (130, 50, 190),
    "magenta": (220, 40, 200),
    "pink": (245, 120, 175),
    "brown": (140, 85, 40),
    "black": (30, 30, 30),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
}
_COLOUR_ALIASES = {"grey": "gray", "violet": "purple"}


def _palette(index: int) -> tuple[int, int, int]:
    """The PASCAL VOC colour map: distinct, stable colours for any index."""
    r = g = b = 0
    c = index + 1  # skip black, which reads as "nothing" in a preview
    for shift in range(7, -1, -1):
        r |= ((c >> 0) & 1) << shift
        g |= ((c >> 1) & 1) << shift
        b |= ((c >> 2) & 1) << shift
        c >>= 3
    return r, g, b
