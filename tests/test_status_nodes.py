"""``jobs.status`` on a ledger rewritten by hand as a cluster run would leave it: finished
shards and labelled images per node, retries by cause, shards known only by their marker."""

from __future__ import annotations

from dataclasses import replace

from fakes import BrightnessSegmenter
from test_pipeline_local import config_for, make_dataset

import jobs.status as status_job
from pipeline import LocalBackend, run_labelling
from pipeline.formats.ledger import Ledger
from pipeline.formats.storage import Storage

A, B = "host-a (node aaaaaaaaaaaa)", "host-b (node bbbbbbbbbbbb)"
C = "host-c (node cccccccccccc)"


def _finished_run(tmp_path):
    """Ten images in shards of 3, 3, 3 and 1, labelled in this process; its ledger."""
    root = make_dataset(tmp_path, count=10)
    assert run_labelling(config_for(root), LocalBackend(BrightnessSegmenter())).ok
    storage = Storage(str(root / "out"))
    ledger = Ledger(storage)
    ledger.read()
    return root / "out", ledger


def test_status_shows_each_nodes_shards_and_images_and_the_retries_by_cause(tmp_path, capsys):
    out, ledger = _finished_run(tmp_path)
    entries = ledger.entries
    assert sorted((i, e.images_done) for i, e in entries.items()) == [
        (0, 3),
        (1, 3),
        (2, 3),
        (3, 1),
    ]
    entries[0] = replace(entries[0], node=A)
    # shard 1 lost twice with node C (preempted), then once on A, and finished on B
    entries[1] = replace(
        entries[1],
        node=B,
        retries={"node_lost": 2, "died": 1},
        retry_nodes={C: {"node_lost": 2}, A: {"died": 1}},
    )
    entries[2] = replace(entries[2], node=A, retries={"oom": 1}, retry_nodes={A: {"oom": 1}})
    del entries[3]  # the ledger lost it: known by its marker alone, its node not recorded
    ledger.compact(entries)

    assert status_job.main([str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    start = lines.index("by node (finished shards, labelled images; attempts retried there):")
    assert lines[start + 1 : start + 6] == [
        f"  {A}: 2 shards, 6 images; retried 1 died, 1 oom",
        f"  {B}: 1 shard, 3 images",
        f"  {C}: 0 shards, 0 images; retried 2 node_lost",
        "  (not recorded): 1 shard, 1 images",
        "attempts retried: 1 died, 2 node_lost, 1 oom",
    ]
    assert "shards: 4 done, 0 failed, 0 pending of 3 planned (+1 finished, not in the ledger)" in (
        lines
    )


def test_status_without_any_recorded_node_prints_no_node_block(tmp_path, capsys):
    out, ledger = _finished_run(tmp_path)
    ledger.compact({i: replace(e, node="") for i, e in ledger.entries.items()})
    assert status_job.main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "by node" not in text and "attempts retried" not in text
    assert "images: 10 labelled, 0 failed" in text
