"""One typed config path: layers, their sources, and the schema, dataclasses and flags in step."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

import schemas
from gclip import InferenceConfig, MethodConfig
from gclip.config import field_names
from pipeline import ConfigChangedError, LocalBackend, RunConfig, load_run_config, run_labelling
from pipeline.cli import INFERENCE_FLAGS, RUN_FLAGS, overrides, parse_args

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"manifest": "m.parquet", "vocabulary": "v.txt", "output": "o"}
# RunConfig fields set otherwise than by a flag of their own name.
NOT_FLAGS = {"method": "--method and --method-options", "inference": "its own flags", "sources": ""}


def test_schema_dataclasses_and_flags_are_in_step():
    schema = schemas.load("run_config")["properties"]
    run_fields = set(field_names(RunConfig)) - {"sources"}
    assert set(schema) == run_fields
    method_object = schema["method"]["oneOf"][1]["properties"]
    assert set(method_object) == set(field_names(MethodConfig))
    assert set(schema["inference"]["properties"]) == set(field_names(InferenceConfig))
    flags = set(RUN_FLAGS) - {"method_options"}
    assert flags | set(NOT_FLAGS) == set(field_names(RunConfig))
    assert set(INFERENCE_FLAGS) == set(field_names(InferenceConfig))
    # every flag parses into the field it names
    args = parse_args(["--shard-timeout", "9", "--pamr-dilations", "3", "5", "--no-pamr"])
    config = load_run_config(REQUIRED, overrides(args))
    assert config.shard_timeout_s == 9 and config.inference.pamr_dilations == (3, 5)
    assert config.inference.pamr is False


def test_a_run_config_round_trips_through_its_json():
    config = load_run_config(
        {**REQUIRED, "method": {"name": "gclip", "global_blocks": [6, 7]}, "threshold": 0.3},
        {},
    )
    again = load_run_config(config.to_json(), {})
    assert again == config
    assert config.method == MethodConfig(global_blocks=(6, 7))
    json.dumps(config.to_json())  # plain JSON values


def test_the_demo_checkpoint_ships_its_scale_and_flags_override_it():
    """Before: --model demo ran at 448/448/224, a scale the demo model never saw."""
    config = load_run_config({**REQUIRED, "model": "demo"}, {})
    assert (config.inference.short_side, config.inference.crop, config.inference.stride) == (
        128,
        64,
        32,
    )
    assert config.method.global_blocks == (2, 3) and config.method.cs_start_block == 3
    assert config.sources["inference.crop"] == "checkpoint"
    assert config.sources["method.global_blocks"] == "checkpoint"
    flagged = load_run_config(
        {**REQUIRED, "model": "demo"}, overrides(parse_args(["--crop", "32"]))
    )
    assert flagged.inference.crop == 32 and flagged.inference.stride == 32
    assert flagged.sources["inference.crop"] == "flag"
    # the shipped blocks are GCLIP's: a peer keeps its own defaults
    peer = load_run_config({**REQUIRED, "model": "demo", "method": "clearclip"}, {})
    assert peer.method == MethodConfig(name="clearclip") and peer.inference.crop == 64
    # other models ship nothing: the library defaults stand
    assert load_run_config(REQUIRED, {}).inference == InferenceConfig()


def test_no_flags_switch_off_a_true_from_the_config_file():
    """Before: --pamr, --png-labels and --background-first-line could only switch on."""
    file_values = {
        **REQUIRED,
        "inference": {"pamr": True},
        "png_labels": True,
        "background_first_line": True,
    }
    args = parse_args(["--no-pamr", "--no-png-labels", "--no-background-first-line"])
    config = load_run_config(file_values, overrides(args))
    assert not (config.inference.pamr or config.png_labels or config.background_first_line)
    assert config.sources["png_labels"] == "flag"
    unset = load_run_config(file_values, overrides(parse_args([])))
    assert unset.inference.pamr and unset.png_labels and unset.background_first_line


def test_python_requirement_matches_the_code():
    """Before: requires-python said >= 3.10, but the code imports datetime.UTC (3.11)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["requires-python"] == ">=3.11"
    assert project["tool"]["ruff"]["target-version"] == "py311"
    assert project["tool"]["mypy"]["python_version"] == "3.11"


def test_an_output_of_an_older_format_is_refused(tmp_path):
    from fakes import BrightnessSegmenter
    from test_pipeline_local import config_for, make_dataset

    root = make_dataset(tmp_path)
    run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))
    run_file = root / "out" / "run.json"
    old = json.loads(run_file.read_text())
    del old["format_version"]  # as written before formats were versioned
    run_file.write_text(json.dumps(old))
    with pytest.raises(ConfigChangedError, match="an older gclip-label .output format 1;"):
        run_labelling(config_for(root), LocalBackend(BrightnessSegmenter()))


def test_the_fingerprint_covers_the_resolved_method(tmp_path):
    """A resume with other global blocks is refused, though the flags name the same method."""
    from test_pipeline_local import make_dataset

    root = make_dataset(tmp_path, count=3)
    values = {
        "manifest": str(root / "m.parquet"),
        "vocabulary": str(root / "vocab.txt"),
        "output": str(root / "out"),
        "model": "demo",
        "inference": {"short_side": 32, "crop": 32, "stride": 32},
    }
    assert run_labelling(load_run_config(values, {}), LocalBackend()).ok
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["resolved"]["method"]["global_blocks"] == [2, 3]
    assert run["resolved"]["model"]["depth"] == 6
    assert run["settings_sources"]["method.global_blocks"] == "checkpoint"
    changed = load_run_config(values, {"method_options": {"global_blocks": [1, 2]}})
    with pytest.raises(ConfigChangedError):
        run_labelling(changed, LocalBackend())
    same = dataclasses.replace(load_run_config(values, {}), images_per_call=2)
    assert run_labelling(same, LocalBackend()).ok  # grouping changes no label
