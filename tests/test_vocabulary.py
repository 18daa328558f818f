"""Vocabulary parsing (text and JSON forms) and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gclip import VocabularyError, load_vocabulary, parse_json, parse_text
from gclip.vocabulary import _palette

CLS_VOC21 = """sky, wall, tree, wood, grass, road, sea, river, mountain, sands, desk
aeroplane
bicycle
person, person in shirt, person in jeans
pottedplant; potted plant
"""


def test_research_cls_file_as_is():
    vocab = parse_text(CLS_VOC21, background_first_line=True)
    assert [c.name for c in vocab.classes] == [
        "sky",
        "aeroplane",
        "bicycle",
        "person",
        "pottedplant",
    ]
    assert vocab.classes[0].is_background and not vocab.classes[1].is_background
    assert vocab.classes[3].names == ("person", "person in shirt", "person in jeans")
    assert vocab.classes[4].names == ("pottedplant", "potted plant")
    assert [c.id for c in vocab.classes] == [1, 2, 3, 4, 5]
    assert vocab.names[:2] == ("sky", "wall")
    assert vocab.name_to_class[:12] == (0,) * 11 + (1,)


def test_comments_blank_lines_and_background_by_name():
    vocab = parse_text("# my classes\n\nroad,street\n  background , sky \ncar\n", threshold=0.3)
    assert [c.names for c in vocab.classes] == [("road", "street"), ("background", "sky"), ("car",)]
    assert [c.is_background for c in vocab.classes] == [False, True, False]
    assert vocab.thresholds == (0.3, 0.3, 0.3)


def test_json_form():
    data = {
        "classes": [
            {
                "id": 7,
                "name": "road",
                "synonyms": ["street"],
                "threshold": 0.6,
                "color": [128, 64, 128],
            },
            {"id": 0, "name": "background", "background": True},
        ],
        "threshold": 0.2,
    }
    vocab = parse_json(data)
    assert vocab.classes[0].id == 7 and vocab.classes[0].color == (128, 64, 128)
    assert vocab.thresholds == (0.6, 0.2)
    assert vocab.classes[1].is_background
    assert parse_json(vocab.to_json()) == vocab
    assert parse_json(vocab.to_json()).fingerprint == vocab.fingerprint
    assert parse_text("a\nb").fingerprint != parse_text("a\nc").fingerprint


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"classes": []}, "classes"),
        ({"classes": [{"name": "x"}]}, "id"),
        ({"classes": [{"id": 1, "name": "x", "color": [1, 2]}]}, "color"),
        ({"classes": [{"id": 1, "name": "x"}], "extra": 1}, "extra"),
        ({"classes": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}, "Class id 1"),
    ],
)
def test_json_errors_name_the_problem(data, match):
    with pytest.raises(VocabularyError, match=match):
        parse_json(data)


def test_empty_and_duplicates_fail():
    with pytest.raises(VocabularyError, match="empty"):
        parse_text("# nothing\n\n")
    with pytest.raises(VocabularyError, match="'car' appears twice"):
        parse_text("car\nvehicle, car")
    with pytest.raises(VocabularyError, match="appears twice"):
        parse_text("Road\nroad")
    with pytest.raises(VocabularyError, match="probabilities"):
        parse_text("a", threshold=1.5)
    with pytest.raises(VocabularyError, match="at most 65534 fit a uint16 label map"):
        parse_text("\n".join(f"class {i}" for i in range(65535)))
    big = parse_text("\n".join(f"class {i}" for i in range(256)))  # past a byte: uint16 maps
    assert big.label_format == (np.dtype(np.uint16), 65535)
    assert parse_text("a\nb").label_format == (np.dtype(np.uint8), 255)


def test_files(tmp_path):
    (tmp_path / "v.txt").write_text("road, street\ncar\n")
    assert len(load_vocabulary(tmp_path / "v.txt").classes) == 2
    (tmp_path / "v.json").write_text(json.dumps({"classes": [{"id": 3, "name": "car"}]}))
    assert load_vocabulary(tmp_path / "v.json", threshold=0.4).thresholds == (0.4,)
    with pytest.raises(VocabularyError, match="does not exist"):
        load_vocabulary(tmp_path / "missing.txt")
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x80 not text")
    with pytest.raises(VocabularyError, match="UTF-8"):
        load_vocabulary(tmp_path / "bin.txt")
    (tmp_path / "bad.json").write_text("{classes: [")
    with pytest.raises(VocabularyError, match="not valid JSON"):
        load_vocabulary(tmp_path / "bad.json")


def test_colour_words_pick_their_colour():
    vocab = parse_text("background\nblue square\nred circle\nred and blue\ncar\nGrey-cat\n")
    colors = vocab.colors()
    r, g, b = colors[1]
    assert b > max(r, g) + 60  # "blue square" is blue, not the palette's magenta
    r, g, b = colors[2]
    assert r > max(g, b) + 60
    assert colors[3] == _palette(3) and colors[4] == _palette(4)  # two colour words, none
    assert colors[5][0] == colors[5][1] == colors[5][2]
    assert colors[0] == _palette(0)  # the background class keeps its palette colour


def test_classes_sharing_a_colour_word_get_distinct_shades_of_it():
    vocab = parse_text("\n".join(f"{c} {s}" for c in ("red", "blue") for s in "abcde"))
    colors = vocab.colors()
    assert len(set(colors)) == len(colors)
    assert all(r > max(g, b) for r, g, b in colors[:5])
    assert all(b > max(r, g) for r, g, b in colors[5:])
    assert vocab.colors() == colors  # deterministic


def test_a_given_colour_wins_over_the_colour_word():
    vocab = parse_json({"classes": [{"id": 1, "name": "red car", "color": [0, 0, 255]}]})
    assert vocab.colors() == [(0, 0, 255)]
