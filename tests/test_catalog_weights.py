"""The catalog answers before any model is built: a model's depth, and whether its weights can
be had (cached, downloadable, local), with the fix in the message when they cannot."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time

import open_clip
import pytest

import gclip
from gclip.backbone import VisionBackbone
from gclip.catalog import DEMO_DIR, WEIGHT_FILES, hub_cache_dir, model_depth
from gclip.weights import WeightsSource, WeightsUnavailableError, check_weights, describe_weights

OPENAI = "timm/vit_base_patch16_clip_224.openai"  # where open_clip 3.x fetches ViT-B-16/openai


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """An empty Hugging Face cache and a hub that refuses connections (the discard port)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    return tmp_path / "hub"


def fake_cached(cache, repo_id: str, filename: str):
    """Lay out ``filename`` of ``repo_id`` as huggingface_hub caches it (revision main)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    (snapshot / filename).write_bytes(b"weights")
    return snapshot / filename


# ---- depth -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-S-32"])
def test_depth_of_a_built_in_name_is_the_built_models(name):
    model = open_clip.create_model(name)
    assert model_depth(name) == VisionBackbone(model.visual).depth == 12


def test_depth_of_the_demo_and_of_a_local_dir_copy(tmp_path):
    depth = VisionBackbone(gclip.load_model("demo").model.visual).depth
    assert model_depth("demo") == depth == 6
    shutil.copytree(DEMO_DIR, tmp_path / "model")
    assert model_depth(f"local-dir:{tmp_path / 'model'}") == depth


def test_depth_unknown_without_fetching_or_for_other_towers(no_hub):
    assert model_depth("hf-hub:org/not-cached") is None
    assert model_depth("local-dir:s3://bucket/models/demo") is None
    assert model_depth("RN50") is None  # a ResNet tower: no ViT blocks
    with pytest.raises(ValueError, match="Unknown open_clip model"):
        model_depth("ViT-Q-99")
    config = fake_cached(no_hub, "org/cached", "open_clip_config.json")
    config.write_text(json.dumps({"model_cfg": {"vision_cfg": {"layers": 24}}}))
    assert model_depth("hf-hub:org/cached") == 24


def test_a_depth_lets_the_driver_refuse_blocks_the_model_lacks():
    method = gclip.MethodConfig(global_blocks=(99,))
    depth = model_depth("ViT-B-16")
    assert depth is not None
    with pytest.raises(ValueError, match=r"global_blocks \(99,\) must be .* \[0, 10\]"):
        method.resolve(depth)


# ---- weights -----------------------------------------------------------------------------


def test_an_uncached_tag_fails_fast_offline_with_the_fixes(no_hub):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        check_weights("ViT-B-16-quickgelu", "openai", timeout_s=3.0)
    assert time.monotonic() - start < 3.0
    message = str(err.value)
    assert f"{no_hub} holds no {WEIGHT_FILES[0]} or {WEIGHT_FILES[1]} of {OPENAI}" in message
    assert "127.0.0.1:9 is unreachable" in message
    assert "--model ViT-B-16-quickgelu --pretrained /path/to/" in message
    assert "--model demo" in message
    assert "open_clip.create_model('ViT-B-16-quickgelu', pretrained='openai')" in message
    assert str(no_hub / f"models--{OPENAI.replace('/', '--')}") in message


def test_openai_weights_under_the_plain_name_point_at_the_quickgelu_twin(no_hub):
    with pytest.raises(WeightsUnavailableError, match="--model ViT-B-16-quickgelu --pretrained"):
        check_weights("ViT-B-16", "openai", timeout_s=1.0)


def test_a_silent_hub_costs_at_most_the_timeout(no_hub, monkeypatch):
    """A host that takes the connection but never answers (as an intercepting proxy may)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        start = time.monotonic()
        with pytest.raises(WeightsUnavailableError, match="did not answer within 1 s"):
            check_weights("ViT-B-32", "laion2b_s34b_b79k", timeout_s=1.0)
        assert time.monotonic() - start < 2.0


@pytest.mark.parametrize("status", [200, 302, 404])
def test_a_hub_must_answer_for_the_file_itself(no_hub, monkeypatch, status):
    asked = []

    class Hub(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            asked.append(self.path)
            self.send_response(status)
            self.send_header("Location", "https://cdn.example/file")
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hub) as hub:
        threading.Thread(target=hub.serve_forever, daemon=True).start()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{hub.server_port}")
        try:
            if status == 404:
                with pytest.raises(WeightsUnavailableError, match="answered HTTP 404"):
                    check_weights("ViT-B-16-quickgelu", "openai", timeout_s=3.0)
            else:
                check = check_weights("ViT-B-16-quickgelu", "openai", timeout_s=3.0)
                assert check.source is WeightsSource.DOWNLOAD and check.file is None
                assert check.hub == f"127.0.0.1:{hub.server_port}"
        finally:
            hub.shutdown()
    assert asked[0] == f"/{OPENAI}/resolve/main/{WEIGHT_FILES[0]}"
    assert len(asked) == (2 if status == 404 else 1)  # the .bin is asked for after the twin


def test_hf_hub_offline_is_named(no_hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set"):
        check_weights("ViT-B-16-quickgelu", "openai")
    with pytest.raises(WeightsUnavailableError, match="hf download org/repo"):
        check_weights("hf-hub:org/repo", None)


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_cached_tag_passes_without_network(no_hub, monkeypatch, tmp_path, variable):
    root = tmp_path / "elsewhere"
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv(variable, str(root))
    cache = root if variable == "HF_HUB_CACHE" else root / "hub"
    assert hub_cache_dir() == cache
    weights = fake_cached(cache, OPENAI, WEIGHT_FILES[1])
    check = check_weights("ViT-B-16-quickgelu", "openai", timeout_s=1.0)
    assert check == gclip.WeightsCheck(WeightsSource.CACHED, weights)
    assert describe_weights("ViT-B-16-quickgelu", "openai") == "openai"


def test_an_unknown_tag_lists_the_models_tags():
    with pytest.raises(ValueError, match="Tags for ViT-B-16-quickgelu: openai, dfn2b"):
        check_weights("ViT-B-16-quickgelu", "laion2b")


def test_the_demo_passes_and_is_described_by_its_digest():
    weights = DEMO_DIR / WEIGHT_FILES[0]
    assert check_weights("demo", None) == gclip.WeightsCheck(WeightsSource.FOLDER, weights)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert describe_weights("demo", "ignored") == f"{WEIGHT_FILES[0]} sha256:{digest}"


def test_local_files_and_folders(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        check_weights("ViT-B-16", str(tmp_path / "missing.pt"))
    checkpoint = tmp_path / "vit.pt"
    checkpoint.write_bytes(b"weights")
    assert check_weights("ViT-B-16", str(checkpoint)).file == checkpoint
    assert describe_weights("ViT-B-16", f"file://{checkpoint}") == str(checkpoint)

    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(ValueError, match="holds no open_clip_config.json"):
        check_weights(f"local-dir:{folder}", None)
    shutil.copy(DEMO_DIR / "open_clip_config.json", folder)
    with pytest.raises(WeightsUnavailableError, match="refusing to fall back to random"):
        check_weights(f"local-dir:{folder}", None)
    (folder / WEIGHT_FILES[1]).write_bytes(b"weights")
    check = check_weights(f"local-dir:{folder}", None)
    assert check == gclip.WeightsCheck(WeightsSource.FOLDER, folder / WEIGHT_FILES[1])
    assert describe_weights(f"local-dir:{folder}", None) == str(folder / WEIGHT_FILES[1])


def test_random_and_remote_weights():
    assert check_weights("ViT-B-16", "none").source is WeightsSource.RANDOM
    assert describe_weights("ViT-B-16", None) == "none"
    assert check_weights("ViT-B-16", "s3://bucket/vit.pt").source is WeightsSource.REMOTE
    assert check_weights("local-dir:s3://bucket/demo", None).source is WeightsSource.REMOTE
    assert describe_weights("ViT-B-16", "s3://bucket/vit.pt") == "s3://bucket/vit.pt"


def test_the_driver_checks_without_torch_except_for_tags(tmp_path):
    """A fresh interpreter: depth, folders, files and random weights never import torch."""
    checkpoint = tmp_path / "vit.pt"
    checkpoint.write_bytes(b"weights")
    code = (
        "import sys, gclip\n"
        "gclip.model_depth('ViT-B-16'); gclip.model_depth('demo')\n"
        "gclip.check_weights('demo', None); gclip.describe_weights('demo', None)\n"
        f"gclip.check_weights('ViT-B-16', {str(checkpoint)!r})\n"
        "gclip.check_weights('ViT-B-16', 'none')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
