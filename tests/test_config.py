"""One typed config path: layers, their sources, and the schema, dataclasses and flags in step."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path

import pytest

import schemas
from gclip import InferenceConfig, MethodConfig
from gclip.config import DEVICES, METHODS, PRECISIONS, field_names
from pipeline import ConfigChangedError, LocalBackend, RunConfig, load_run_config, run_labelling
from pipeline.cli import INFERENCE_FLAGS, RUN_FLAGS, overrides, parse_args
from pipeline.config import EXECUTION_KEYS, LABELLING_KEYS
from pipeline.formats.checkpoints import shipped_settings

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = {"manifest": "m.parquet", "vocabulary": "v.txt", "output": "o"}
# Settings set otherwise than by a flag of their own name.
NOT_FLAGS = {"method": "--method and --method-options", "inference": "its own flags"}
WHERE = ("manifest", "vocabulary", "output")


def test_schema_dataclasses_and_flags_are_in_step():
    schema = schemas.load("run_config")["properties"]
    settings = {*WHERE, *LABELLING_KEYS, *EXECUTION_KEYS}
    assert set(schema) == settings
    assert not set(LABELLING_KEYS) & set(EXECUTION_KEYS)  # each setting has one home
    assert set(field_names(RunConfig)) == {*WHERE, "labelling", "execution", "sources"}
    method_object = schema["method"]["oneOf"][1]["properties"]
    assert set(method_object) == set(field_names(MethodConfig))
    assert set(schema["inference"]["properties"]) == set(field_names(InferenceConfig))
    flags = set(RUN_FLAGS) - {"method_options"}
    assert flags | set(NOT_FLAGS) == settings
    assert set(INFERENCE_FLAGS) == set(field_names(InferenceConfig))
    # every flag parses into the field it names
    args = parse_args(["--shard-timeout", "9", "--pamr-dilations", "3", "5", "--no-pamr"])
    config = load_run_config(REQUIRED, overrides(args), shipped_settings)
    assert config.execution.shard_timeout_s == 9 and config.labelling.inference.pamr_dilations == (
        3,
        5,
    )
    assert config.labelling.inference.pamr is False


def test_the_schemas_enums_are_the_python_tuples():
    """Method names, precisions and devices: one home each in gclip.config, the schema in step."""
    schema = schemas.load("run_config")
    assert tuple(schema["$defs"]["method_name"]["enum"]) == METHODS
    assert tuple(schema["properties"]["inference"]["properties"]["precision"]["enum"]) == PRECISIONS
    assert tuple(schema["properties"]["device"]["enum"]) == DEVICES


def test_a_run_config_round_trips_through_its_json():
    config = load_run_config(
        {**REQUIRED, "method": {"name": "gclip", "global_blocks": [6, 7]}, "threshold": 0.3},
        {},
        shipped_settings,
    )
    again = load_run_config(config.to_json(), {}, shipped_settings)
    assert again == config
    assert config.labelling.method == MethodConfig(global_blocks=(6, 7))
    json.dumps(config.to_json())  # plain JSON values


def test_the_demo_checkpoint_ships_its_scale_and_flags_override_it():
    """Before: --model demo ran at 448/448/224, a scale the demo model never saw."""
    config = load_run_config({**REQUIRED, "model": "demo"}, {}, shipped_settings)
    assert (
        config.labelling.inference.short_side,
        config.labelling.inference.crop,
        config.labelling.inference.stride,
    ) == (
        128,
        64,
        32,
    )
    assert (
        config.labelling.method.global_blocks == (2, 3)
        and config.labelling.method.cs_start_block == 3
    )
    assert config.sources["inference.crop"] == "checkpoint"
    assert config.sources["method.global_blocks"] == "checkpoint"
    flagged = load_run_config(
        {**REQUIRED, "model": "demo"}, overrides(parse_args(["--crop", "32"])), shipped_settings
    )
    assert flagged.labelling.inference.crop == 32 and flagged.labelling.inference.stride == 32
    assert flagged.sources["inference.crop"] == "flag"
    # the shipped blocks are GCLIP's: a peer keeps its own defaults
    peer = load_run_config(
        {**REQUIRED, "model": "demo", "method": "clearclip"}, {}, shipped_settings
    )
    assert (
        peer.labelling.method == MethodConfig(name="clearclip")
        and peer.labelling.inference.crop == 64
    )
    # other models ship nothing: the library defaults stand
    assert load_run_config(REQUIRED, {}, shipped_settings).labelling.inference == InferenceConfig()


def test_no_flags_switch_off_a_true_from_the_config_file():
    """Before: --pamr, --png-labels and --background-first-line could only switch on."""
    file_values = {
        **REQUIRED,
        "inference": {"pamr": True},
        "png_labels": True,
        "background_first_line": True,
    }
    args = parse_args(["--no-pamr", "--no-png-labels", "--no-background-first-line"])
    config = load_run_config(file_values, overrides(args), shipped_settings)
    assert not (
        config.labelling.inference.pamr
        or config.labelling.png_labels
        or config.labelling.background_first_line
    )
    assert config.sources["png_labels"] == "flag"
    unset = load_run_config(file_values, overrides(parse_args([])), shipped_settings)
    assert (
        unset.labelling.inference.pamr
        and unset.labelling.png_labels
        and unset.labelling.background_first_line
    )


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
    assert run_labelling(load_run_config(values, {}, shipped_settings), LocalBackend()).ok
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["resolved"]["method"]["global_blocks"] == [2, 3]
    assert run["resolved"]["model"]["depth"] == 6
    assert run["settings_sources"]["method.global_blocks"] == "checkpoint"
    changed = load_run_config(
        values, {"method_options": {"global_blocks": [1, 2]}}, shipped_settings
    )
    with pytest.raises(ConfigChangedError):
        run_labelling(changed, LocalBackend())
    config = load_run_config(values, {}, shipped_settings)
    same = dataclasses.replace(
        config, execution=dataclasses.replace(config.execution, images_per_call=2)
    )
    assert run_labelling(same, LocalBackend()).ok  # grouping changes no label
