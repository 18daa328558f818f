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
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from torch import nn

from gclip.catalog import HF_HUB, LOCAL_DIR, WEIGHT_FILES, local_dir
from gclip.config import ShippedSettings, read_shipped
from gclip.weights import (
    WeightsSource,
    WeightsUnavailableError,
    check_weights,
    download_command,
    tag_config,
    unavailable_message,
)

log = logging.getLogger(__name__)

__all__ = [
    "CheckpointError",
    "LoadedModel",
    "WeightsUnavailableError",
    "eval_transform",
    "load_model",
]


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
        WeightsUnavailableError: a tag is neither cached nor downloadable
            (:func:`gclip.weights.check_weights`, which a driver can ask first).
        CheckpointError: a checkpoint file exists but does not load.
        ValueError: unknown model name, tag, or missing checkpoint file.
    """
    check = check_weights(name, pretrained, connect_timeout, cache_dir)
    if check.source is WeightsSource.REMOTE:
        raise ValueError(
            f"{name} / {pretrained}: gclip loads weights from local files; fetch remote ones "
            "first (pipeline.formats.checkpoints.localize does, once per node)."
        )
    folder = local_dir(name)
    if folder is not None:
        assert check.file is not None, "check_weights finds a folder's weights file"
        return _load_local_dir(folder, check.file, name, device)
    if name.startswith(HF_HUB):
        return _load_hub_model(name, device, cache_dir)
    if check.source is WeightsSource.RANDOM:
        return _load_random(name, pretrained, device)
    quick_gelu = False
    if check.source is not WeightsSource.FILE:
        assert pretrained is not None, "a tag was checked"
        tag = tag_config(name, pretrained)
        # OpenAI weights were trained with QuickGELU; plain ViT-B-16 would silently use GELU.
        quick_gelu = bool(tag.get("quick_gelu", False))
    checkpoint = str(check.file) if check.file else _download(name, pretrained, cache_dir)
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
    source = checkpoint if check.source is WeightsSource.FILE else str(pretrained)
    return LoadedModel(
        model.eval(), open_clip.get_tokenizer(name), name, source, weights_file=checkpoint
    )


def eval_transform(model: nn.Module) -> Callable[[Any], torch.Tensor]:
    """open_clip's own evaluation transform for ``model``: what ``create_model_and_transforms``
    returns as ``preprocess_val`` (resize the short side to the model's image size, centre
    crop, normalise with its mean and std), from the preprocessing config open_clip recorded
    on the model (its legacy ``image_size`` / ``image_mean`` / ``image_std`` otherwise).

    Returns:
        A PIL RGB image -> ``3 x S x S`` float32 tensor.
    """
    recorded = dict(open_clip.get_model_preprocess_cfg(model))
    return image_transform_v2(
        PreprocessCfg(**{**asdict(PreprocessCfg()), **recorded}), is_train=False
    )


def random_weights_seed(name: str) -> int:
    """The seed of ``name``'s random weights: the same in every process and run."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big")


def _load_random(name: str, pretrained: str | None, device: str | torch.device) -> LoadedModel:
    message = (
        f"Building {name} with RANDOM weights (pretrained={pretrained!r}, seeded from the "
        "model name): its labels are meaningless. Pass an open_clip tag or a checkpoint path "
        "for real labels."
    )
    log.warning(message)
    warnings.warn(message, stacklevel=3)
    seed = random_weights_seed(name)
    # Seeded from the name alone, so every worker, retry and run builds the same model.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(name, device="cpu")
    return LoadedModel(
        model.to(device).eval(), open_clip.get_tokenizer(name), name, "none", seed=seed
    )


def _download(name: str, pretrained: str | None, cache_dir: str | None) -> str:
    """Download a tag's weights (its hub answered :func:`check_weights`); their path."""
    assert pretrained is not None, "only tags are downloaded"
    try:
        return str(open_clip.download_pretrained(tag_config(name, pretrained), cache_dir=cache_dir))
    except Exception as err:
        raise WeightsUnavailableError(
            unavailable_message(
                f"the weights {name} / {pretrained}",
                f"the download failed ({type(err).__name__}: {err})",
                f"--model {name} --pretrained /path/to/{WEIGHT_FILES[0]}",
                download_command(name, pretrained),
            )
        ) from err


def _load_hub_model(name: str, device: str | torch.device, cache_dir: str | None) -> LoadedModel:
    """An ``hf-hub:`` model, which open_clip fetches (or, offline, reads from the cache)."""
    try:
        model = open_clip.create_model(name, device=device, cache_dir=cache_dir)
    except Exception as err:
        raise WeightsUnavailableError(
            unavailable_message(
                name,
                f"loading failed ({type(err).__name__}: {err})",
                f"--model local-dir:/path/to/a/copy/of/{name.removeprefix(HF_HUB)}",
                download_command(name),
                name.removeprefix(HF_HUB),
            )
        ) from err
    return LoadedModel(model.eval(), open_clip.get_tokenizer(name, cache_dir=cache_dir), name, name)


def _load_local_dir(
    folder: Path, weights: Path, name: str, device: str | torch.device
) -> LoadedModel:
    """A model saved as open_clip's local-dir layout (checked by ``check_weights``), plus our
    optional ``gclip.json``."""
    spec = f"{LOCAL_DIR}{folder}"
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
