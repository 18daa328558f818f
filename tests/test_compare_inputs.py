"""``jobs.compare`` before any labelling: the seeded sample, the variants and their layering,
and bad input refused with exit 2 and the fix (no model, no Ray)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs import compare as compare_job
from pipeline import InputError, LocalBackend
from pipeline.comparing import draw_sample, flag_settings
from pipeline.comparing.sample import write_sample
from pipeline.comparing.variants import layered
from pipeline.formats.storage import Storage

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"


def expected_sample(ids, size, seed):
    """Independently: the ids with the smallest sha256('<seed>:<id>'), in manifest order."""
    key = {i: hashlib.sha256(f"{seed}:{i}".encode()).digest() for i in ids}
    chosen = set(sorted(ids, key=key.get)[:size])
    return [i for i in ids if i in chosen]


def test_the_sample_is_the_smallest_hashes_whatever_the_files_order(tmp_path):
    demo = pq.read_table(DEMO / "manifest.parquet")
    ids = demo["image_id"].to_pylist()
    sample = draw_sample(str(DEMO / "manifest.parquet"), 5, seed=3)
    assert sample["image_id"].to_pylist() == expected_sample(ids, 5, 3)
    assert sample.schema.names == demo.schema.names  # every column of the manifest
    # Same rows cut into two files in another order, in another folder, with an extra column.
    folder = tmp_path / "m"
    folder.mkdir()
    reordered = demo.take(pa.array(list(range(15, -1, -1))))
    uris = [os.path.relpath(DEMO / u, folder) for u in reordered["uri"].to_pylist()]
    reordered = reordered.set_column(1, "uri", [uris]).append_column("note", [["x"] * 16])
    pq.write_table(reordered.slice(0, 9), folder / "b.parquet")
    pq.write_table(reordered.slice(9), folder / "a.parquet")
    again = draw_sample(str(folder), 5, seed=3)  # a.parquet (rows 6..0), then b.parquet
    in_order = (
        reordered["image_id"].slice(9).to_pylist() + reordered["image_id"].slice(0, 9).to_pylist()
    )
    assert again["image_id"].to_pylist() == expected_sample(in_order, 5, 3)
    assert sorted(again["image_id"].to_pylist()) == sorted(sample["image_id"].to_pylist())
    assert "note" in again.schema.names
    # Relative uris resolved against their file's folder (row_uri), as the labelling job does.
    by_id = dict(zip(sample["image_id"].to_pylist(), sample["uri"].to_pylist(), strict=True))
    pairs = zip(again["image_id"].to_pylist(), again["uri"].to_pylist(), strict=True)
    assert all(by_id[i] == u for i, u in pairs)
    assert all(Path(u).is_file() for u in again["uri"].to_pylist())
    # Reproducible, seeded, and a larger sample extends a smaller one.
    assert draw_sample(str(DEMO / "manifest.parquet"), 5, seed=3).equals(sample)
    other = draw_sample(str(DEMO / "manifest.parquet"), 5, seed=4)["image_id"].to_pylist()
    assert other == expected_sample(ids, 5, 4) != sample["image_id"].to_pylist()
    larger = draw_sample(str(DEMO / "manifest.parquet"), 8, seed=3)["image_id"].to_pylist()
    assert set(sample["image_id"].to_pylist()) < set(larger)
    assert draw_sample(str(DEMO / "manifest.parquet"), 99, seed=3).num_rows == 16


def test_a_folder_holding_another_sample_is_refused(tmp_path):
    storage = Storage(str(tmp_path))
    write_sample(storage, draw_sample(str(DEMO / "manifest.parquet"), 4, seed=0))
    write_sample(storage, draw_sample(str(DEMO / "manifest.parquet"), 4, seed=0))  # the same
    with pytest.raises(InputError, match="holds another sample"):
        write_sample(storage, draw_sample(str(DEMO / "manifest.parquet"), 4, seed=1))


def test_the_variants_file_wins_over_the_command_line_key_by_key():
    flags = {
        "model": "demo",
        "threshold": 0.2,
        "method": "gclip",
        "method_options": {"cs_enabled": False},
        "inference": {"short_side": 64, "pamr": True},
        "png_labels": None,
    }
    below = flag_settings(flags)
    assert below == {
        "model": "demo",
        "threshold": 0.2,
        "method": {"name": "gclip", "cs_enabled": False},
        "inference": {"short_side": 64, "pamr": True},
    }
    above = {"method": "maskclip", "inference": {"short_side": 48}, "threshold": None}
    assert layered(below, above) == {
        "model": "demo",
        "threshold": None,
        "method": {"name": "maskclip", "cs_enabled": False},
        "inference": {"short_side": 48, "pamr": True},
    }
    assert layered({}, above) == above


class NoWork(LocalBackend):
    def resolve(self, *args, **kwargs):
        raise AssertionError("bad input must be refused before any labelling")

    executor = resolve


def _variant(tmp_path, name, settings):
    file = tmp_path / f"{name}.json"
    file.write_text(settings if isinstance(settings, str) else json.dumps(settings))
    return f"{name}={file}"


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([("a", {"model": "demo"})], "1 variant(s) given; a comparison takes 2 to 8"),
        ([(f"v{i}", {"model": "demo"}) for i in range(9)], "9 variant(s) given"),
        ([("a", {"model": "demo"}), ("a", {"model": "demo"})], "'a' is given twice; rename one"),
        ([("a", {}), ("b", {"treshold": 0.3})], "not a run config"),
        ([("a", {}), ("b", "{model: demo")], "cannot be read as JSON"),
        ([("a", {}), ("b", {"output": "x"})], "sets output, which the comparison decides"),
        ([("a", {}), ("b", {"method": "maskclip", "model": "ViT-B-61"})], "Unknown open_clip"),
        ([("a", {}), ("b c", {})], "must be a folder name"),
    ],
)
def test_bad_variants_exit_2_naming_the_fix(tmp_path, capsys, variants, message):
    specs = [a for name, s in variants for a in ("--variant", _variant(tmp_path, name, s))]
    out = tmp_path / "out"
    argv = [
        *(
            "--manifest",
            str(DEMO / "manifest.parquet"),
            "--vocabulary",
            str(DEMO / "vocabulary.txt"),
        ),
        *("--sample", "2", "--output", str(out), "--model", "demo", *specs),
    ]
    assert compare_job.main(argv, backend=NoWork()) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (out / "variants").exists() and not (out / "sample.parquet").exists()


def test_a_bad_sample_or_a_config_flag_exits_2(tmp_path, capsys):
    specs = ["--variant", _variant(tmp_path, "a", {}), "--variant", _variant(tmp_path, "b", {})]
    base = [
        "--manifest",
        str(DEMO / "manifest.parquet"),
        "--vocabulary",
        str(DEMO / "vocabulary.txt"),
    ]
    base += ["--output", str(tmp_path / "o"), "--model", "demo", *specs]
    assert compare_job.main([*base, "--sample", "0"], backend=NoWork()) == 2
    assert "--sample 0: give at least 1 image" in capsys.readouterr().err
    assert compare_job.main([*base, "--sample", "2", "--config", "x.json"], backend=NoWork()) == 2
    assert "give --variant NAME=FILE" in capsys.readouterr().err


def test_ground_truth_that_cannot_score_the_variants_exits_2_before_labelling(tmp_path, capsys):
    other = tmp_path / "other.txt"
    other.write_text("background\nred circle\n")
    base = [
        "--manifest",
        str(DEMO / "manifest.parquet"),
        "--vocabulary",
        str(DEMO / "vocabulary.txt"),
    ]
    base += ["--sample", "2", "--model", "demo", "--variant", _variant(tmp_path, "a", {})]
    empty = tmp_path / "no_truth"
    empty.mkdir()
    cases = [
        (str(empty), _variant(tmp_path, "b", {}), "has none of the sample's images"),
        (
            str(DEMO / "ground_truth"),
            _variant(tmp_path, "c", {"vocabulary": str(other)}),
            "variant c labels other classes than a",
        ),
    ]
    for n, (truth, variant, message) in enumerate(cases):
        out = tmp_path / f"out{n}"
        argv = [*base, "--variant", variant, "--ground-truth", truth, "--output", str(out)]
        assert compare_job.main(argv, backend=NoWork()) == 2
        assert message in capsys.readouterr().err
        assert not (out / "variants").exists()
