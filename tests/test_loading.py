"""Model loading: tags, local checkpoints, random weights, and failing fast offline."""

from __future__ import annotations

import os
import time

import open_clip
import pytest
import torch

from gclip import WeightsSource, WeightsUnavailableError, check_weights, load_model
from gclip.loading import random_weights_seed


def test_offline_tag_fails_fast_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="--pretrained /path/to/") as err:
        load_model("ViT-B-16-quickgelu", pretrained="openai", cache_dir=str(tmp_path))
    assert time.monotonic() - start < 10
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_unreachable_hub_fails_within_the_timeout(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        load_model(
            "ViT-B-32", pretrained="laion2b_s34b_b79k", cache_dir=str(tmp_path), connect_timeout=2
        )
    assert time.monotonic() - start < 10


def test_cached_tag_is_loaded_offline_with_quick_gelu(monkeypatch, tmp_path):
    """A tag already in the Hugging Face cache is used without any network, and OpenAI
    weights get QuickGELU even under the plain model name."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    source = open_clip.create_model("ViT-S-32", force_quick_gelu=True)
    cfg = {"hf_hub": "org/vit-s-32/", "quick_gelu": True}
    snapshot = tmp_path / "models--org--vit-s-32" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("abc123")
    torch.save(source.state_dict(), snapshot / "open_clip_pytorch_model.bin")
    monkeypatch.setattr(open_clip, "get_pretrained_cfg", lambda model, tag: cfg)
    loaded = load_model("ViT-S-32", pretrained="openai", cache_dir=str(tmp_path))
    assert loaded.pretrained == "openai"
    assert loaded.weights_file == str(snapshot / "open_clip_pytorch_model.bin")
    assert type(loaded.model.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"


def test_random_weights_warn_loudly_and_are_seeded_by_name():
    with pytest.warns(UserWarning, match="RANDOM weights"):
        loaded = load_model("ViT-S-32", pretrained="none")
    assert loaded.pretrained == "none" and loaded.seed == random_weights_seed("ViT-S-32")
    assert loaded.weights_file is None
    assert check_weights("ViT-S-32", "none").source is WeightsSource.RANDOM


def test_bad_names_and_tags():
    with pytest.raises(ValueError, match="Unknown open_clip model"):
        load_model("ViT-Q-99", pretrained="none")
    with pytest.raises(ValueError, match="Tags for ViT-B-16: .*openai"):
        load_model("ViT-B-16", pretrained="not-a-tag")
    with pytest.raises(ValueError, match="does not exist"):
        load_model("ViT-B-16", pretrained="/nowhere/model.pt")
    with pytest.raises(ValueError, match="open_clip_config.json"):
        load_model("local-dir:/nowhere")


@pytest.mark.slow
def test_local_checkpoint_loads_with_weights_only(tmp_path):
    """A real built-in config (ViT-S-32) from a local file; pickled objects are refused."""
    torch.manual_seed(0)
    source = open_clip.create_model("ViT-S-32")
    path = tmp_path / "vit-s-32.pt"
    torch.save(source.state_dict(), path)
    loaded = load_model("ViT-S-32", pretrained=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key
    assert loaded.pretrained == str(path)

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": source.state_dict(), "payload": _Payload()}, evil)
    with pytest.raises(Exception, match="[Ww]eights only|weights_only|Unsupported global"):
        load_model("ViT-S-32", pretrained=str(evil))


class _Payload:
    """An arbitrary pickled class: torch.load(weights_only=True) must refuse it."""


def test_hf_hub_model_fails_fast_offline(tmp_path):
    """HF_HUB_OFFLINE is read when the hub client is imported: test it as users set it, in a
    fresh process's environment."""
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path)}
    code = "import gclip; gclip.load_model('hf-hub:timm/ViT-B-16-SigLIP')"
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "WeightsUnavailableError" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert (
        "--model local-dir:" in result.stderr
        and "hf download timm/ViT-B-16-SigLIP" in result.stderr
    )
    assert time.monotonic() - start < 30  # interpreter and torch start-up included


def test_hf_hub_model_fails_fast_when_unreachable(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        load_model("hf-hub:timm/ViT-B-16-SigLIP", cache_dir=str(tmp_path), connect_timeout=2)
    assert time.monotonic() - start < 10


def test_remote_weights_are_refused_with_the_fix():
    """gclip reads local files only; the pipeline fetches remote ones first."""
    for name, pretrained in (("local-dir:s3://b/models/m", None), ("ViT-B-16", "s3://b/x.pt")):
        with pytest.raises(ValueError, match="fetch remote ones first"):
            load_model(name, pretrained=pretrained)
