"""Which models and weights exist, answered without importing torch or open_clip.

A driver checks ``--model`` and ``--pretrained`` here before starting anything: open_clip's
model names are the files of its ``model_configs`` folder (exactly what ``list_models()``
returns), and a checkpoint path either exists or does not. Tags are checked when the model is
built, since open_clip keeps them in code.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

DEMO_MODEL = "demo"
DEMO_DIR = Path(__file__).parent / "assets" / "demo"
RANDOM_WEIGHTS = ("", "none", "random")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
LOCAL_DIR, HF_HUB = "local-dir:", "hf-hub:"


@cache
def model_names() -> frozenset[str]:
    """open_clip's built-in model names, read from its ``model_configs`` folder."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed: pip install open_clip_torch")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model_configs"
    return frozenset(p.stem for p in folder.glob("*.json"))


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


def check_source(model: str, pretrained: str | None) -> None:
    """Raise ``ValueError`` naming the fix if ``model`` or a local ``pretrained`` file cannot exist.

    Remote locations (``s3://...``) are checked where they are fetched.
    """
    if model == DEMO_MODEL or model.startswith(HF_HUB):
        return
    if model.startswith(LOCAL_DIR):
        folder = local_dir(model)
        if folder is not None and not (folder / "open_clip_config.json").is_file():
            raise ValueError(
                f"{folder} holds no open_clip_config.json; a local-dir model needs that file and "
                "open_clip_model.safetensors or open_clip_pytorch_model.bin beside it."
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
        path = Path(pretrained.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise ValueError(
                f"Checkpoint file {path} does not exist (--pretrained {pretrained}). Pass an "
                "existing file, an s3:// URI, or an open_clip tag such as 'openai'."
            )
