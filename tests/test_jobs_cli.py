"""Entry points: config files and flags, input errors before any work, and jobs.status."""

from __future__ import annotations

import json
import time

import pytest
from fakes import BrightnessSegmenter
from test_pipeline_local import job_args, make_dataset

from jobs import label as label_job
from jobs import status as status_job
from pipeline import (
    InputError,
    LocalBackend,
    RunConfig,
    SegmenterSpec,
    load_run_config,
    run_labelling,
)
from pipeline.cli import overrides, parse_args
from pipeline.formats.checkpoints import shipped_settings


def test_flags_override_the_config_file(tmp_path):
    file_values = {
        "manifest": "m.parquet",
        "vocabulary": "v.txt",
        "output": "o",
        "method": "naclip",
        "inference": {"crop": 224, "stride": 112},
        "shard_size": 10,
    }
    args = parse_args(
        ["--shard-size", "5", "--stride", "56", "--method-options", '{"naclip_sigma": 3}']
    )
    config = load_run_config(file_values, overrides(args), shipped_settings)
    assert config.execution.shard_size == 5 and config.labelling.method.name == "naclip"
    assert (config.labelling.inference.crop, config.labelling.inference.stride) == (224, 56)
    assert config.labelling.method.naclip_sigma == 3
    assert config.sources["inference.stride"] == "flag"
    assert config.sources["inference.crop"] == "config file"
    assert "inference.short_side" not in config.sources  # a default


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"manifest": "m", "vocabulary": "v"}, "--output"),
        ({"manifest": "m", "vocabulary": "v", "output": "o", "shard_size": 0}, "shard_size"),
        ({"manifest": "m", "vocabulary": "v", "output": "o", "method": "segclip"}, "method"),
        (
            {
                "manifest": "m",
                "vocabulary": "v",
                "output": "o",
                "inference": {"crop": 8, "stride": 16},
            },
            "stride",
        ),
        ({"manifest": "m", "vocabulary": "v", "output": "o", "inference": {"crops": 8}}, "crops"),
        (
            {
                "manifest": "m",
                "vocabulary": "v",
                "output": "o",
                "method_options": {"head_avg": True},
            },
            "head_avg",
        ),
    ],
)
def test_bad_configs_fail_clearly(values, match):
    with pytest.raises(InputError, match=match):
        load_run_config(None, values, shipped_settings)


def test_block_indices_are_checked_against_the_model():
    config = load_run_config(
        None,
        {
            "manifest": "m",
            "vocabulary": "v",
            "output": "o",
            "method_options": {"global_blocks": [99]},
        },
        shipped_settings,
    )
    with pytest.raises(ValueError, match="global_blocks"):  # known once the model's depth is
        SegmenterSpec("demo", None, config.labelling.method)()


def test_label_job_rejects_bad_input_fast(tmp_path, capsys):
    root = make_dataset(tmp_path)
    (root / "empty.txt").write_text("\n")
    start = time.monotonic()
    code = label_job.main(
        [
            "--manifest",
            str(root / "m.parquet"),
            "--vocabulary",
            str(root / "empty.txt"),
            "--output",
            str(root / "out"),
        ]
    )
    assert code == 2 and "vocabulary is empty" in capsys.readouterr().err
    code = label_job.main(
        [
            "--manifest",
            str(root / "nope.parquet"),
            "--vocabulary",
            str(root / "vocab.txt"),
            "--output",
            str(root / "out"),
        ]
    )
    assert code == 2 and "does not exist" in capsys.readouterr().err
    (root / "bad.json").write_text(json.dumps({"manifest": 3}))
    assert label_job.main(["--config", str(root / "bad.json")]) == 2
    assert "run_config" in capsys.readouterr().err
    assert time.monotonic() - start < 10  # no Ray was started for any of these


def test_status_reads_the_ledger(tmp_path, capsys):
    root = make_dataset(tmp_path)
    config = RunConfig.from_settings(
        manifest=str(root / "m.parquet"),
        vocabulary=str(root / "vocab.txt"),
        output=str(root / "out"),
        shard_size=3,
        pretrained="none",
    )
    run_labelling(config, LocalBackend(BrightnessSegmenter(always_fail=True)))
    assert status_job.main([str(root / "out"), "--tracebacks"]) == 1
    out = capsys.readouterr().out
    assert "0 done, 3 failed" in out and "ZeroDivisionError" in out
    run_labelling(config, LocalBackend(BrightnessSegmenter()))
    assert status_job.main([str(root / "out")]) == 0
    assert "3 done, 0 failed" in capsys.readouterr().out
    assert status_job.main([str(tmp_path / "nothing")]) == 2


def test_label_job_summarises_failed_images(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path, broken=(1, 2, 5))  # 1, 5: empty files; 2: garbage bytes
    monkeypatch.setattr(
        label_job, "RayBackend", lambda address: LocalBackend(BrightnessSegmenter())
    )
    code = label_job.main(job_args(root))
    assert code == 0  # failed images do not fail the job
    out = capsys.readouterr().out
    assert "4 images labelled, 3 failed" in out
    assert "failed images by cause: 3 ImageDecodeError;" in out
    (root / "img" / "2.png").write_bytes((root / "img" / "0.png").read_bytes())  # repaired
    assert label_job.main([*job_args(root), "--retry-failed"]) == 0
    assert "5 images labelled, 2 failed" in capsys.readouterr().out
