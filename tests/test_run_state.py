"""One reader of a run's state: status, the report and resume agree; damaged ledger files and
markers are named and recovered from."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
from fakes import BrightnessSegmenter
from test_pipeline_local import assert_same_outputs, config_for, ledger_of, make_dataset

import jobs.merge as merge_job
import jobs.status as status_job
from pipeline import LocalBackend, run_labelling
from pipeline.formats.ledger import Ledger, ShardState
from pipeline.formats.progress import read_progress
from pipeline.formats.storage import Storage
from pipeline.reading.report_data import gather


def labelled(tmp_path, name="out", **kw):
    root = make_dataset(tmp_path)
    config = config_for(root, output=str(root / name), **kw)
    assert run_labelling(config, LocalBackend(BrightnessSegmenter())).ok
    return root, root / name


@pytest.fixture
def clean(tmp_path):
    """A clean run beside the one a test damages (same images, so the same file names)."""
    return labelled(tmp_path, "clean")[1]


def test_status_report_and_resume_agree_on_a_done_entry_without_its_marker(tmp_path, capsys):
    """Before: resume reset such a shard to pending while jobs.status counted it done."""
    _root, out = labelled(tmp_path)
    (out / "shards" / "shard-000001.json").unlink()
    progress = read_progress(Storage(str(out), create=False))
    assert progress.entries[1].state == ShardState.PENDING
    assert status_job.main([str(out)]) == 0
    assert "shards: 2 done, 0 failed, 1 pending of 3 planned" in capsys.readouterr().out
    assert gather(str(out)).totals.shards_done == 2
    # and a marker the ledger has not heard of counts as done everywhere
    ledger = Ledger(Storage(str(out)))
    ledger.read()
    ledger.compact({i: e for i, e in ledger.entries.items() if i != 0})  # entry 0 lost
    assert status_job.main([str(out)]) == 0
    assert "shards: 2 done" in capsys.readouterr().out  # shard 0 by marker, shard 2
    assert gather(str(out)).totals.shards_done == 2


@pytest.mark.parametrize(
    "damage",
    [
        ("segment", b"\xff\xfe garbage \x00"),
        ("segment", b'{"shard": 1, "state": '),
        ("segment", b'{"garbage": true}\n'),
        ("state", None),  # truncated
    ],
)
def test_a_damaged_ledger_file_is_named_skipped_and_moved_aside_on_resume(
    tmp_path, clean, capsys, damage
):
    kind, data = damage
    root, out = labelled(tmp_path)
    ledger_dir = out / "ledger"
    if kind == "segment":
        [state] = ledger_dir.glob("state-*.parquet")
        generation = state.name.split("-")[1].split(".")[0]
        bad = ledger_dir / f"segment-{generation}-000001.jsonl"
        bad.write_bytes(data)
    else:
        [bad] = ledger_dir.glob("state-*.parquet")
        bad.write_bytes(bad.read_bytes()[:40])
    # readers name the file and go on from the markers
    assert status_job.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert bad.name in text and "damaged" in text and "shards: 3 done" in text
    assert gather(str(out)).totals.images_labelled == 7
    # the driver moves it aside and resumes to the same outputs as a clean run
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    assert not bad.exists() and (out / "damaged" / "ledger" / bad.name).exists()
    assert all(e.state == ShardState.DONE for e in ledger_of(out).values())
    assert_same_outputs(out, clean)


def test_a_damaged_marker_is_named_and_its_shard_labelled_again(tmp_path, clean, capsys):
    root, out = labelled(tmp_path)
    marker = out / "shards" / "shard-000002.json"
    marker.write_text('{"garbage": true}')
    # merge: exit 2, the file and the fix named (before: KeyError: 'failures')
    assert merge_job.main([str(out)]) == 2
    err = capsys.readouterr().err
    assert "shard-000002.json is damaged" in err and "Delete it and run" in err
    # a ledger that does not yet call it done: the driver moves it aside and relabels it
    ledger = Ledger(Storage(str(out)))
    ledger.read()
    ledger.compact({**ledger.entries, 2: replace(ledger.entries[2], state=ShardState.PENDING)})
    assert status_job.main([str(out)]) == 0
    assert "shard-000002.json" in capsys.readouterr().out
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    assert (out / "damaged" / "shards" / "shard-000002.json").exists()
    assert_same_outputs(out, clean)


def test_a_damaged_marker_found_by_the_merge_is_relabelled_by_the_next_run(tmp_path, clean):
    root, out = labelled(tmp_path)
    (out / "shards" / "shard-000001.json").write_text("[1, 2")
    run = json.loads((out / "run.json").read_text())
    run["state"] = "interrupted"  # so the next run does not find everything done
    (out / "run.json").write_text(json.dumps(run))
    from pipeline.errors import DamagedFileError

    with pytest.raises(DamagedFileError, match="shard-000001.json .*run the same jobs.label"):
        run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    assert_same_outputs(out, clean)


def test_a_damaged_run_json_is_named(tmp_path, capsys):
    _, out = labelled(tmp_path)
    (out / "run.json").write_bytes(b"\x00\x01")
    assert status_job.main([str(out)]) == 2
    assert "run.json is damaged" in capsys.readouterr().err
    shutil.rmtree(out / "ledger")
    (out / "run.json").unlink()
    assert status_job.main([str(out)]) == 2
    assert "holds no run.json" in capsys.readouterr().err
