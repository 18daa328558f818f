"""Inputs of jobs.manifest and jobs.merge: links to folders, empty image files, merged names."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_manifest_sources import image_bytes, make, rows_of

from jobs import merge as merge_job
from pipeline.formats.images import ImageDecodeError, decode


@pytest.fixture
def linked(tmp_path) -> Path:
    """img/{a.jpg, sub/b.jpg}, a loop (loop/up -> img), a second way into sub (alias -> sub),
    and a folder outside the tree (ext -> ../outside, holding c.jpg)."""
    root = tmp_path / "img"
    for name in ("a.jpg", "sub/b.jpg", "loop/.keep"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes("x.jpg", 3, 2))
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "c.jpg").write_bytes(image_bytes("c.jpg", 3, 2))
    os.symlink("..", root / "loop" / "up")
    os.symlink("sub", root / "alias")
    os.symlink("../outside", root / "ext")
    return root


def test_links_to_folders_are_skipped_and_said_so(linked, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    code, stdout, _ = make(capsys, linked, "--output", out)
    assert code == 0
    assert [r["image_id"] for r in rows_of(str(out))] == ["a.jpg", "sub/b.jpg"]
    assert "skipped 3 link(s) to folders not entered (--follow-links enters them)" in stdout


def test_followed_links_list_each_folder_once(linked, tmp_path, capsys):
    out = tmp_path / "m.parquet"
    code, stdout, _ = make(capsys, linked, "--output", out, "--follow-links")
    assert code == 0
    rows = rows_of(str(out))
    # the real folder wins over the link into it; the loop ends at the folder it returns to
    assert [r["image_id"] for r in rows] == ["a.jpg", "ext/c.jpg", "sub/b.jpg"]
    assert rows[1]["uri"] == str(linked / "ext" / "c.jpg")
    assert "skipped 2 link(s) to folders already listed" in stdout
    # a pattern walks the same way
    assert make(capsys, f"{linked}/**/*.jpg", "--output", out, "--follow-links")[0] == 0
    assert [r["image_id"] for r in rows_of(str(out))] == ["a.jpg", "ext/c.jpg", "sub/b.jpg"]


def test_broken_links_are_counted_not_listed(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(image_bytes("a.jpg", 3, 2))
    os.symlink("nowhere.jpg", tmp_path / "img" / "gone.jpg")
    code, stdout, _ = make(capsys, tmp_path / "img", "--output", tmp_path / "m.parquet")
    assert code == 0 and "(broken link or not a file: 1)" in stdout
    assert [r["image_id"] for r in rows_of(str(tmp_path / "m.parquet"))] == ["a.jpg"]


def test_probing_an_empty_file_says_what_labelling_says(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(image_bytes("a.jpg", 3, 2))
    (tmp_path / "img" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "m.parquet"
    for flags in (["--probe"], ["--probe", "--sha256"]):
        assert make(capsys, tmp_path / "img", "--output", out, *flags)[0] == 0
        [failure] = [
            json.loads(x) for x in Path(f"{out}.unreadable.jsonl").read_text().splitlines()
        ]
        with pytest.raises(ImageDecodeError) as labelling:
            decode(b"")
        assert (failure["error"], failure["message"]) == ("ImageDecodeError", str(labelling.value))
        assert failure["message"] == "the file is empty"


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../x.json", "'..'"),
        ("exports/../../x.json", "'..'"),
        ("/tmp/x.json", "is absolute"),
        ("s3://bucket/x.json", "is absolute"),
        ("", "is empty"),
        ("exports/", "an empty part"),
        ("run.json", "the run's own files"),
        ("shards/x.json", "the run's own files"),
    ],
)
def test_merged_names_stay_inside_the_output_folder(tmp_path, capsys, name, problem):
    (tmp_path / "run").mkdir()
    assert merge_job.main([str(tmp_path / "run"), "--name", name]) == 2
    err = capsys.readouterr().err
    assert problem in err and "give a file name or a relative path inside" in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["run"]  # nothing written


def test_plain_and_nested_names_are_accepted():
    assert merge_job.name_problem("cvat.json") is None
    assert merge_job.name_problem("tools/cvat.json") is None
    assert merge_job.name_problem("annotations.json") is None
