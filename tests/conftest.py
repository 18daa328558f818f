"""Shared fixtures: tiny random-weight open_clip models (CPU, seconds to build), a local Ray
instance per module, and an S3 server (moto's server mode, on loopback)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import fakes
import open_clip
import pyarrow.fs as pafs
import pytest
import torch


def tiny_clip(
    depth: int = 12, width: int = 64, heads: int = 4, patch: int = 8, image: int = 32, seed: int = 0
):
    """A random open_clip CLIP with a ViT tower ``depth`` blocks deep (pretrained grid image/patch)."""
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=32,
        vision_cfg=open_clip.CLIPVisionCfg(
            layers=depth, width=width, head_width=width // heads, patch_size=patch, image_size=image
        ),
        text_cfg=open_clip.CLIPTextCfg(
            context_length=16, vocab_size=49408, width=32, heads=2, layers=1
        ),
    )
    # Random init leaves some tensors at exactly 0/1 (biases, LayerNorm); jitter them so that
    # every weight takes part in the equations under test.
    with torch.no_grad():
        for p in model.visual.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="session")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-16", context_length=16)


@pytest.fixture(scope="session")
def clip12():
    return tiny_clip(depth=12)


@pytest.fixture(scope="session")
def clip6():
    return tiny_clip(depth=6, seed=1)


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray instance of 2 CPUs for one test module; its actors unpickle the fakes."""
    ray = pytest.importorskip("ray")
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(fakes)  # the actors unpickle the fakes by value
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()
    cloudpickle.unregister_pickle_by_value(fakes)


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    fs = pafs.S3FileSystem(
        endpoint_override=s3_endpoint.removeprefix("http://"),
        scheme="http",
        access_key="x",
        secret_key="x",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir("data")
    fs.create_dir("labels")
    return fs
