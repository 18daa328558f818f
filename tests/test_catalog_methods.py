"""One registry of methods: the dispatch, the options each reads, and the shipped options
each takes follow ``gclip.config.METHOD_SPECS``."""

from __future__ import annotations

import pytest

import gclip
from gclip.catalog import DEMO_DIR
from gclip.config import (
    METHOD_SPECS,
    METHODS,
    MethodConfig,
    ShippedSettings,
    field_names,
    method_spec,
    read_shipped,
)
from gclip.methods import LAST_BLOCKS


def test_every_registered_method_has_its_last_block_and_reads_real_options():
    assert tuple(LAST_BLOCKS) == METHODS == tuple(METHOD_SPECS)
    for spec in METHOD_SPECS.values():
        assert set(spec.options) <= set(field_names(MethodConfig)) - {"name"}, spec.name
    assert [n for n, s in METHOD_SPECS.items() if s.fuses_global_blocks] == ["gclip"]
    assert {n for n, s in METHOD_SPECS.items() if s.keeps_residual} == {"sclip", "clip"}


def test_an_unknown_method_is_named_with_the_known_ones():
    with pytest.raises(ValueError, match="Unknown method 'segclip'; choose one of gclip, "):
        method_spec("segclip")
    with pytest.raises(ValueError, match="Unknown method"):
        ShippedSettings().method_options_for("segclip")


@pytest.mark.parametrize("name", METHODS)
def test_peers_resolve_fully_and_read_neither_blocks_nor_suppression(name):
    config = MethodConfig(name=name, global_blocks=(2, 3), cs_start_block=3).resolve(12)
    spec = method_spec(name)
    assert config.recorded_blocks == ((2, 3) if spec.fuses_global_blocks else ())
    assert config.uses_channel_suppression == spec.suppresses_channels
    assert config.needs_calibration is False
    if not spec.fuses_global_blocks:
        assert (config.global_blocks, config.cs_start_block) == ((), None)


def test_shipped_options_go_to_the_methods_that_read_them():
    demo = read_shipped(DEMO_DIR)
    assert demo.method_options_for("gclip") == {"global_blocks": [2, 3], "cs_start_block": 3}
    for peer in METHODS[1:]:
        assert demo.method_options_for(peer) == {}, peer
    sigma = ShippedSettings(method_options={"naclip_sigma": 2.0, "head_average": False})
    assert sigma.method_options_for("naclip") == {"naclip_sigma": 2.0}
    assert sigma.method_options_for("gclip") == {"head_average": False}


def test_the_demo_segmenter_takes_its_shipped_blocks_for_gclip_only():
    loaded = gclip.load_model("demo")
    assert gclip.load_segmenter(loaded, method="gclip").method.global_blocks == (2, 3)
    peer = gclip.load_segmenter(loaded, method="clearclip").method
    assert peer == MethodConfig(name="clearclip").resolve(6)
