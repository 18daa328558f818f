"""Building open_clip models from a name and a ``pretrained`` source, failing fast offline.

Sources: an open_clip tag (``openai``, ``laion2b_s34b_b88k``, ...), a local checkpoint path,
``none`` for random weights (seeded from the model name, so every process builds the same
model), or the bundled ``demo`` model. A tag whose weights are not in the local cache is
downloaded only when the hub answers within seconds; otherwise the error says how to pass a
local checkpoint instead of waiting through a minute of retries.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import open_clip
import torch
from torch import nn

from gclip.catalog import HF_HUB, LOCAL_DIR, check_source, is_random, is_remote, local_dir
from gclip.config import ShippedSettings, read_shipped

log = logging.getLogger(__name__)

_HF_SAFE_NAME = "open_clip_model.safetensors"
_HF_DEFAULT_NAME = "open_clip_pytorch_model.bin"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be found locally nor downloaded; the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint file exists but cannot be loaded (truncated, corrupt, another model's)."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """An open_clip model ready for a :class:`gclip.Segmenter`.

    Attributes:
        model: the open_clip ``CLIP`` in eval mode.
        tokenizer: its tokenizer.
        name: model name as given.
        pretrained: the resolved weights source (tag, path, or ``none``).
        shipped: settings shipped with the checkpoint (the demo model's global blocks and
            inference scale, for example); callers layer their own settings over them.
        weights_file: the file the weights were read from, when there is one.
        seed: the seed of random weights (``pretrained="none"``), else ``None``.
    """

    model: nn.Module
    tokenizer: Any
    name: str
    pretrained: str
    shipped: ShippedSettings = field(default_factory=ShippedSettings)
    weights_file: str | None = None
    seed: int | None = None


def load_model(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    cache_dir: str | None = None,
    connect_timeout: float = 3.0,
) -> LoadedModel:
    """Build an open_clip model and its tokenizer.

    Args:
        name: an open_clip model name (``ViT-B-16``), ``local-dir:PATH``, ``hf-hub:ORG/REPO``
            or ``demo``.
        pretrained: an open_clip tag, a checkpoint path, or ``none``/``None`` for random
            weights (warned about loudly). Ignored for ``demo``, ``local-dir:`` and ``hf-hub:``.
        device: where the model lives.
        cache_dir: open_clip / Hugging Face cache folder.
        connect_timeout: seconds to wait for the hub before declaring it unreachable.

    Raises:
        WeightsUnavailableError: a tag is neither cached nor downloadable.
        CheckpointError: a checkpoint file exists but does not load.
        ValueError: unknown model name, tag, or missing checkpoint file.
    """
    check_source(name, pretrained)
    remote_dir = name.startswith(LOCAL_DIR) and is_remote(name.removeprefix(LOCAL_DIR))
    if remote_dir or (pretrained is not None and is_remote(pretrained)):
        raise ValueError(
            f"{name} / {pretrained}: gclip loads weights from local files; fetch remote ones "
            "first (pipeline.formats.checkpoints.localize does, once per node)."
        )
    folder = local_dir(name)
    if folder is not None:
        return _load_local_dir(folder, name, device)
    if name.startswith(HF_HUB):
        # Offline (HF_HUB_OFFLINE=1) the hub client reads its cache and fails at once if the
        # model is not there; online, an unreachable hub is detected before its retries.
        if not hub_offline():
            _require_reachable(
                os.environ.get("HF_ENDPOINT", "https://huggingface.co"), connect_timeout, name
            )
        try:
            model = open_clip.create_model(name, device=device, cache_dir=cache_dir)
        except Exception as err:
            raise WeightsUnavailableError(
                _offline_message(name, None, f"loading failed ({err})")
            ) from err
        return LoadedModel(
            model.eval(), open_clip.get_tokenizer(name, cache_dir=cache_dir), name, name
        )

    checkpoint, quick_gelu, source = _resolve_weights(name, pretrained, cache_dir, connect_timeout)
    if checkpoint is None:
        seed = random_weights_seed(name)
        # Seeded from the name alone, so every worker, retry and run builds the same model.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, device="cpu")
        return LoadedModel(
            model.to(device).eval(), open_clip.get_tokenizer(name), name, source, seed=seed
        )
    try:
        model = open_clip.create_model(
            name,
            pretrained=checkpoint,
            force_quick_gelu=quick_gelu,
            device=device,
            cache_dir=cache_dir,
            weights_only=True,
        )
    except Exception as err:
        raise CheckpointError(
            f"Cannot load checkpoint {checkpoint} into {name}: {type(err).__name__}: {err}. "
            "The file may be truncated, corrupt, or the weights of another model."
        ) from err
    return LoadedModel(
        model.eval(), open_clip.get_tokenizer(name), name, source, weights_file=checkpoint
    )


def random_weights_seed(name: str) -> int:
    """The seed of ``name``'s random weights: the same in every process and run."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _resolve_weights(
    name: str, pretrained: str | None, cache_dir: str | None, timeout: float
) -> tuple[str | None, bool, str]:
    """Return ``(checkpoint path or None, force QuickGELU, source label)``."""
    if pretrained is None or is_random(pretrained):  # (None spelled out for the type checker)
        message = (
            f"Building {name} with RANDOM weights (pretrained={pretrained!r}, seeded from the "
            "model name): its labels are meaningless. Pass an open_clip tag or a checkpoint path "
            "for real labels."
        )
        log.warning(message)
        warnings.warn(message, stacklevel=3)
        return None, False, "none"
    path = Path(pretrained.removeprefix("file://")).expanduser()
    if path.is_file():
        return str(path), False, str(path)
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if not tag_cfg:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        raise ValueError(
            f"{pretrained!r} is neither a checkpoint file nor an open_clip tag of {name}. "
            f"Tags for {name}: {tags}."
        )
    # OpenAI weights were trained with QuickGELU; plain ViT-B-16 would silently use GELU.
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    cached = _cached_checkpoint(tag_cfg, cache_dir)
    if cached is not None:
        return cached, quick_gelu, pretrained
    hub = _download_host(tag_cfg)
    _require_reachable(hub, timeout, f"weights {name}/{pretrained}")
    try:
        downloaded = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:
        raise WeightsUnavailableError(
            _offline_message(name, pretrained, f"download failed: {err}")
        ) from err
    return downloaded, quick_gelu, pretrained


def _cached_checkpoint(tag_cfg: dict[str, Any], cache_dir: str | None) -> str | None:
    """Path of the tag's weights in the local cache, or ``None``."""
    if tag_cfg.get("file"):
        return str(tag_cfg["file"])
    hf_hub = tag_cfg.get("hf_hub", "")
    if hf_hub:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filename = os.path.split(hf_hub)
        candidates = [_HF_SAFE_NAME, _HF_DEFAULT_NAME] if not filename else [filename]
        for candidate in candidates:
            found = try_to_load_from_cache(repo_id, candidate, cache_dir=cache_dir)
            if isinstance(found, str):
                return found
        return None
    url = tag_cfg.get("url", "")
    if url:
        target = Path(cache_dir or Path.home() / ".cache" / "clip") / os.path.basename(url)
        return str(target) if target.is_file() else None
    return None


def _download_host(tag_cfg: dict[str, Any]) -> str:
    if tag_cfg.get("hf_hub"):
        return os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return str(tag_cfg.get("url", "https://huggingface.co"))


def hub_offline() -> bool:
    """Whether the environment declares the model hub off limits (``HF_HUB_OFFLINE=1``)."""
    return any(
        os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _require_reachable(url: str, timeout: float, what: str) -> None:
    if hub_offline():
        raise WeightsUnavailableError(_offline_message(what, None, "HF_HUB_OFFLINE is set"))
    parsed = urlparse(url)
    host, port = parsed.hostname or url, parsed.port or (80 if parsed.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as err:
        raise WeightsUnavailableError(
            _offline_message(
                what, None, f"{host}:{port} unreachable within {timeout:.0f} s ({err})"
            )
        ) from err


def _offline_message(name: str, tag: str | None, why: str) -> str:
    what = f"{name}/{tag}" if tag else name
    return (
        f"Cannot get pretrained {what}: not in the local cache and {why}. Download the checkpoint "
        "on a machine with network access (open_clip caches it under ~/.cache/huggingface), copy "
        "it here and pass its path: --pretrained /path/to/open_clip_pytorch_model.bin "
        "(load_model(name, pretrained='/path/...')). For OpenAI weights use a '-quickgelu' "
        "model name with a local file. If the weights are in the Hugging Face cache, set "
        "HF_HUB_OFFLINE=1 to use it. To try the tool without weights use --model demo."
    )


def _load_local_dir(folder: Path, name: str, device: str | torch.device) -> LoadedModel:
    """A model saved as open_clip's local-dir layout (config checked by ``check_source``),
    plus our optional ``gclip.json``."""
    found = [folder / f for f in (_HF_SAFE_NAME, _HF_DEFAULT_NAME) if (folder / f).is_file()]
    if not found:
        raise WeightsUnavailableError(
            f"{folder} has a config but no {_HF_SAFE_NAME} or {_HF_DEFAULT_NAME}; "
            "refusing to fall back to random weights."
        )
    spec, weights = f"{LOCAL_DIR}{folder}", found[0]
    try:
        model = open_clip.create_model(spec, device=device, weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"Cannot load the model in {folder} ({weights.name}): {type(err).__name__}: {err}."
        ) from err
    return LoadedModel(
        model=model.eval(),
        tokenizer=open_clip.get_tokenizer(spec),
        name=name,
        pretrained=str(folder),
        shipped=read_shipped(folder),
        weights_file=str(weights),
    )
