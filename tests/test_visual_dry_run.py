"""The --dry-run text: human size units and aligned file columns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.planning.dry_run import describe_plan, human_size


@pytest.mark.parametrize(
    ("num_bytes", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (999.6, "1.00 KB"),
        (7523, "7.52 KB"),
        (9996, "10.0 KB"),
        (99_960, "100 KB"),
        (38_400_000, "38.4 MB"),
        (1.234e9, "1.23 GB"),
        (5e15, "5000 TB"),
    ],
)
def test_sizes_read_in_human_units(num_bytes, text):
    assert human_size(num_bytes) == text


def test_a_small_run_is_not_zero_gigabytes_and_its_columns_line_up():
    manifest = SimpleNamespace(location="m.parquet", rows=16, files=[], columns=[])
    plan = SimpleNamespace(shards=[0] * 4, kept=0, images=16)
    text = describe_plan(manifest, plan, 0, "out", png_labels=True, merge_limit=100)  # type: ignore[arg-type]
    assert "0.00 GB" not in text and " KB (about " in text
    files = [line for line in text.splitlines() if line.startswith("  ")]
    assert len(files) == 7
    # the description column starts at one offset: two spaces after the longest path
    starts = {len(line) - len(line[2:].split("  ", 1)[1].lstrip()) for line in files}
    assert len(starts) == 1
