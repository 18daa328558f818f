"""Which models exist and what they are, answered before any model is built.

A driver checks ``--model`` and ``--pretrained`` here before it starts anything: open_clip's
model names and depths are the files of its ``model_configs`` folder (exactly what
``list_models()`` returns), and a ``demo`` or ``local-dir:`` folder holds its config or not.
Whether the weights can be had is :mod:`gclip.weights`. Nothing here imports torch.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

DEMO_MODEL = "demo"


DEMO_DIR = Path(__file__).parent / "assets" / "demo"


RANDOM_WEIGHTS = ("", "none", "random")


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"


# open_clip's folder layout (local-dir and hf-hub): the config, and the weights, preferred first.
CONFIG_FILE = "open_clip_config.json"


WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@cache
def model_names() -> frozenset[str]:
    """open_clip's built-in model names, read from its ``model_configs`` folder."""
    return frozenset(p.stem for p in _model_configs().glob("*.json"))


def is_remote(location: str) -> bool:
    """Whether ``location`` is a URI of another file system (``s3://``, ``gs://``, ...)."""
    scheme = urlparse(location).scheme
    return len(scheme) > 1 and scheme != "file"


def is_random(pretrained: str | None) -> bool:
    return pretrained is None or pretrained.lower() in RANDOM_WEIGHTS


def looks_like_path(pretrained: str) -> bool:
    """A ``--pretrained`` value meant as a file rather than an open_clip tag."""
    return (
        pretrained.lower().endswith(CHECKPOINT_SUFFIXES)
        or os.sep in pretrained
        or pretrained.startswith(("~", "file://"))
        or is_remote(pretrained)
    )


def local_dir(model: str) -> Path | None:
    """The folder of a ``demo`` or ``local-dir:PATH`` model on this machine, else ``None``."""
    if model == DEMO_MODEL:
        return DEMO_DIR
    if model.startswith(LOCAL_DIR) and not is_remote(model.removeprefix(LOCAL_DIR)):
        return Path(model.removeprefix(LOCAL_DIR).removeprefix("file://")).expanduser()
    return None


def model_depth(model: str) -> int | None:
    """Blocks in ``model``'s ViT tower, read from its config without building it.

    Args:
        model: an open_clip name, ``demo``, ``local-dir:PATH`` or ``hf-hub:ORG/REPO``.

    Returns:
        The depth; ``None`` where it cannot be known without fetching (a remote folder, an
        hf-hub model not in the cache) or the tower is not open_clip's ViT (ResNet, timm).

    Raises:
        ValueError: an unknown model name or a folder without its config (see
            :func:`check_source`).
    """
    check_source(model, None)
    folder = local_dir(model)
    if folder is not None:
        config = _read_json(folder / CONFIG_FILE)
    elif model.startswith(HF_HUB):
        found = cached_hub_file(model.removeprefix(HF_HUB), (CONFIG_FILE,), None)
        if found is None:
            return None
        config = _read_json(found)
    elif model.startswith(LOCAL_DIR):
        return None
    else:
        config = _read_json(_model_configs() / f"{model}.json")
    return vision_depth(config)


def vision_depth(config: Mapping[str, Any]) -> int | None:
    """``vision_cfg.layers`` of an open_clip model config (or of an ``open_clip_config.json``
    document, which holds it under ``model_cfg``) when the tower is a ViT, else ``None``."""
    vision = config.get("model_cfg", config).get("vision_cfg", {})
    layers = vision.get("layers")
    if vision.get("timm_model_name") or not isinstance(layers, int):
        return None
    return layers


def check_source(model: str, pretrained: str | None) -> None:
    """Raise ``ValueError`` naming the fix if ``model`` or a local ``pretrained`` file cannot exist.

    Remote locations (``s3://...``) are checked where they are fetched; whether weights can be
    had is :func:`check_weights`'s question.
    """
    if model == DEMO_MODEL or model.startswith(HF_HUB):
        return
    if model.startswith(LOCAL_DIR):
        folder = local_dir(model)
        if folder is not None and not (folder / CONFIG_FILE).is_file():
            raise ValueError(
                f"{folder} holds no {CONFIG_FILE}; a local-dir model needs that file and "
                f"{' or '.join(WEIGHT_FILES)} beside it."
            )
        return
    if model not in model_names():
        close = difflib.get_close_matches(model, sorted(model_names()), n=4, cutoff=0.6)
        hint = f" Close names: {', '.join(close)}." if close else ""
        raise ValueError(
            f"Unknown open_clip model {model!r}.{hint} ViT examples: ViT-B-16, "
            "ViT-B-16-quickgelu, ViT-L-14; or 'demo', 'local-dir:/path', 'hf-hub:org/repo'."
        )
    if pretrained is None or is_random(pretrained) or is_remote(pretrained):
        return
    if looks_like_path(pretrained):
        path = checkpoint_path(pretrained)
        if not path.is_file():
            raise ValueError(
                f"Checkpoint file {path} does not exist (--pretrained {pretrained}). Pass an "
                "existing file, an s3:// URI, or an open_clip tag such as 'openai'."
            )


def _model_configs() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed: pip install open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations))) / "model_configs"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read the model config {path}: {err}.") from err
    return data


def checkpoint_path(pretrained: str) -> Path:
    """``--pretrained`` as a local path (``file://`` and ``~`` resolved)."""
    return Path(pretrained.removeprefix("file://")).expanduser()


def hub_cache_dir(cache_dir: str | None = None) -> Path:
    """The Hugging Face hub cache: ``cache_dir``, else ``HF_HUB_CACHE``, else
    ``HF_HOME/hub`` (default ``~/.cache/huggingface/hub``).

    Read at each call, with huggingface_hub's precedence: huggingface_hub itself reads the
    variables once, when it is imported.
    """
    if cache_dir:
        return Path(cache_dir).expanduser()
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(variable):
            return Path(os.path.expandvars(os.environ[variable])).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    home = os.environ.get("HF_HOME") or os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def cached_hub_file(repo_id: str, files: tuple[str, ...], cache_dir: str | None) -> Path | None:
    """The first of ``files`` of ``repo_id`` in the hub cache (``main`` revision), or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    for name in files:
        found = try_to_load_from_cache(repo_id, name, cache_dir=str(hub_cache_dir(cache_dir)))
        if isinstance(found, str):
            return Path(found)
    return None
