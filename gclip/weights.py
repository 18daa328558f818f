"""Whether a model's weights can be had, and what a run records as the weights it used.

A ``demo`` or ``local-dir:`` folder holds its weights file or not; a checkpoint path exists or
not; a pretrained tag's weights are in the local cache or their hub answers within seconds.
:func:`gclip.load_model` asks :func:`check_weights` the same question as the driver, so the
two cannot disagree. Nothing here imports torch, except to look up an open_clip pretrained
*tag*: open_clip keeps its tags in code, and importing any of it imports torch.
"""

from __future__ import annotations

import enum
import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from gclip.catalog import (
    CONFIG_FILE,
    DEMO_MODEL,
    HF_HUB,
    LOCAL_DIR,
    WEIGHT_FILES,
    cached_hub_file,
    check_source,
    checkpoint_path,
    hub_cache_dir,
    is_random,
    is_remote,
    local_dir,
    looks_like_path,
    model_names,
)

DEFAULT_HUB = "https://huggingface.co"


# Where open_clip's url downloads go when no cache_dir is given (tags without a hub id).
URL_CACHE = Path("~/.cache/clip")


class WeightsUnavailableError(ValueError):
    """Pretrained weights cannot be found locally nor downloaded; the message says what to do."""


class WeightsSource(enum.Enum):
    """Where a model's weights come from."""

    RANDOM = "random"  # seeded random weights (``--pretrained none``)
    FILE = "file"  # a checkpoint file on this machine
    FOLDER = "folder"  # the weights file of a ``demo`` or ``local-dir:`` folder
    CACHED = "cached"  # a tag's or hf-hub model's weights, already in the local cache
    DOWNLOAD = "download"  # not cached, but the hub answered: downloaded when built
    REMOTE = "remote"  # on an object store (``s3://``): checked and fetched by the pipeline


@dataclass(frozen=True, slots=True)
class WeightsCheck:
    """The outcome of :func:`check_weights`: the weights can be had, and from where.

    Attributes:
        source: where they come from.
        file: the local weights file, when known now (``FILE``, ``FOLDER``, a cached tag).
        hub: the host that answered for the files, for ``DOWNLOAD`` (and hf-hub models,
            which open_clip asks the hub for even when they are cached).
    """

    source: WeightsSource
    file: Path | None = None
    hub: str | None = None


def check_weights(
    model: str, pretrained: str | None, timeout_s: float = 5.0, cache_dir: str | None = None
) -> WeightsCheck:
    """Find where ``model``'s weights will come from, before anything is built.

    Steps: the names (:func:`check_source`); a folder's weights file; a checkpoint file; a
    tag's or hf-hub model's files in the local cache, else a hub that answers for them within
    ``timeout_s`` (:func:`download_problem`). Only the tag lookup imports open_clip (and
    torch).

    Args:
        model: an open_clip name, ``demo``, ``local-dir:PATH|URI`` or ``hf-hub:ORG/REPO``.
        pretrained: an open_clip tag, a checkpoint path or URI, or ``none``/``None``; unused
            for folders and hf-hub models.
        timeout_s: seconds the hub has to answer.
        cache_dir: the open_clip / Hugging Face cache folder, if not the default.

    Raises:
        WeightsUnavailableError: not cached and the hub is unreachable (or ``HF_HUB_OFFLINE``);
            the message names the fixes.
        ValueError: an unknown model or tag (the model's tags listed), a missing file.
    """
    check_source(model, pretrained)
    folder = local_dir(model)
    if folder is not None:
        return WeightsCheck(WeightsSource.FOLDER, folder_weights(folder))
    if model.startswith(LOCAL_DIR):
        return WeightsCheck(WeightsSource.REMOTE)
    if model.startswith(HF_HUB):
        return _check_hub_model(model, timeout_s, cache_dir)
    if pretrained is None or is_random(pretrained):
        return WeightsCheck(WeightsSource.RANDOM)
    if is_remote(pretrained):
        return WeightsCheck(WeightsSource.REMOTE)
    path = checkpoint_path(pretrained)
    if path.is_file():
        return WeightsCheck(WeightsSource.FILE, path)
    tag = tag_config(model, pretrained)
    repo_id, candidates = _tag_hub_files(tag)
    cached = _cached_tag_file(tag, cache_dir)
    if cached is not None:
        return WeightsCheck(WeightsSource.CACHED, cached)
    urls = (
        [hub_file_url(repo_id, name) for name in candidates]
        if repo_id
        else [str(tag.get("url") or DEFAULT_HUB)]
    )
    why = offline_reason() or download_problem(urls, timeout_s)
    if why:
        raise WeightsUnavailableError(
            unavailable_message(
                f"the weights {model} / {pretrained}",
                why,
                _local_file_fix(model, bool(tag.get("quick_gelu"))),
                download_command(model, pretrained),
                repo_id,
                candidates,
                cache_dir,
            )
        )
    return WeightsCheck(WeightsSource.DOWNLOAD, hub=urlparse(urls[0]).netloc)


def describe_weights(model: str, pretrained: str | None) -> str:
    """What a run records as the weights it used, without loading them.

    Returns:
        For ``demo`` the bundled file's name and sha256 (``open_clip_model.safetensors
        sha256:...``: the checkpoint changes with the package); for a ``local-dir:`` folder its
        weights file; for an hf-hub model or a remote folder the model string; for a
        checkpoint its path or URI; for a tag the tag (``openai``); for random weights
        ``none``.

    Raises:
        WeightsUnavailableError: a local folder holds no weights file.
    """
    folder = local_dir(model)
    if folder is not None:
        weights = folder_weights(folder)
        if model == DEMO_MODEL:
            return f"{weights.name} sha256:{hashlib.sha256(weights.read_bytes()).hexdigest()}"
        return str(weights)
    if model.startswith(LOCAL_DIR):
        return model.removeprefix(LOCAL_DIR)
    if model.startswith(HF_HUB):
        return model
    if pretrained is None or is_random(pretrained):
        return "none"
    if is_remote(pretrained):
        return pretrained
    path = checkpoint_path(pretrained)
    return str(path) if looks_like_path(pretrained) or path.is_file() else pretrained


def folder_weights(folder: Path) -> Path:
    """The weights file of a ``demo`` / ``local-dir:`` folder (safetensors preferred).

    Raises:
        WeightsUnavailableError: the folder holds neither weights file.
    """
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise WeightsUnavailableError(
        f"{folder} has a config but no {' or '.join(WEIGHT_FILES)}; refusing to fall back to "
        "random weights. Copy the weights file beside its config, or pass --model demo."
    )


def tag_config(model: str, tag: str) -> dict[str, Any]:
    """open_clip's pretrained config of ``model`` / ``tag`` (imports open_clip, hence torch).

    Raises:
        ValueError: ``tag`` is not one of the model's tags; the message lists them.
    """
    import open_clip

    found: dict[str, Any] = open_clip.get_pretrained_cfg(model, tag)
    if not found:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(model)) or "none"
        raise ValueError(
            f"{tag!r} is neither a checkpoint file nor an open_clip tag of {model}. "
            f"Tags for {model}: {tags}; or pass a checkpoint file, or 'none' for random weights."
        )
    return found


def hub_endpoint() -> str:
    """The Hugging Face hub's address (``HF_ENDPOINT``, else huggingface.co)."""
    return os.environ.get("HF_ENDPOINT", DEFAULT_HUB).rstrip("/")


def hub_file_url(repo_id: str, filename: str) -> str:
    """The hub address of ``filename`` in ``repo_id`` (revision ``main``)."""
    return f"{hub_endpoint()}/{repo_id}/resolve/main/{filename}"


def offline_reason() -> str | None:
    """``"HF_HUB_OFFLINE is set"`` (or its transformers twin) when the hub is off limits."""
    for variable in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{variable} is set"
    return None


def download_problem(urls: Sequence[str], timeout_s: float) -> str | None:
    """Why none of ``urls`` can be downloaded now, asked with a ``HEAD`` each and
    ``timeout_s`` seconds in all; ``None`` when one answers with success (2xx, or a 3xx to its
    content).

    A connection alone proves nothing (an intercepting proxy accepts every one), so the hub
    must answer for the file itself. A thread bounds name resolution too, which socket
    timeouts do not cover. The proxies of the environment apply, as they do for downloads.
    """
    outcome: list[str | None] = []

    def ask() -> None:
        problems = []
        for url in urls:
            problem = _head(url, timeout_s)
            if problem is None:
                outcome.append(None)
                return
            if problem not in problems:  # two files of one hub fail alike: say it once
                problems.append(problem)
        outcome.append("; ".join(problems))

    attempt = threading.Thread(target=ask, daemon=True)
    attempt.start()
    attempt.join(timeout_s)
    if not outcome:
        return f"{urlparse(urls[0]).netloc} did not answer within {timeout_s:g} s"
    return outcome[0]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect answers the question (the file exists): do not follow it to the CDN."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _head(url: str, timeout_s: float) -> str | None:
    request = urllib.request.Request(url, method="HEAD")
    if urlparse(url).netloc == urlparse(hub_endpoint()).netloc:
        from huggingface_hub import get_token

        token = get_token()  # gated repositories answer 401 without it
        if token:
            request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout_s):
            return None
    except urllib.error.HTTPError as err:
        if err.code < 400:
            return None
        return f"{url} answered HTTP {err.code} {err.reason}"
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"{urlparse(url).netloc} is unreachable ({type(reason).__name__}: {reason})"


def unavailable_message(
    what: str,
    why: str,
    local_fix: str,
    download: str,
    repo_id: str = "",
    files: tuple[str, ...] = (),
    cache_dir: str | None = None,
) -> str:
    """The error for weights neither cached nor downloadable, with every way out.

    Args:
        what: the weights, as the user named them.
        why: why they cannot be downloaded (offline, the hub unreachable, the download failed).
        local_fix: the flags that use a local copy instead.
        download: the command that fetches them into the cache, on a machine with network.
        repo_id: their hub repository, if any; ``files``: the files of it looked for, in
            order (none: the whole repository).
        cache_dir: the cache looked in, if not the default.
    """
    cache = hub_cache_dir(cache_dir)
    looked = "they are not in the local cache"
    where = "the same cache folder here"
    if repo_id:
        looked = f"{cache} holds no {' or '.join(files) or 'copy'} of {repo_id}"
        where = f"{cache / ('models--' + repo_id.replace('/', '--'))} here (or set HF_HUB_CACHE)"
    return (
        f"Cannot get {what}: {looked}, and {why}. Fixes: use a local copy, {local_fix}; or "
        "try the tool without weights, --model demo; or pre-download them on a machine with "
        f"network access, {download}, and copy the cached folder to {where}."
    )


def download_command(model: str, tag: str | None = None) -> str:
    """The shell command that puts ``model`` / ``tag``'s weights in the cache, as open_clip
    itself would fetch them."""
    if model.startswith(HF_HUB):
        return f"hf download {model.removeprefix(HF_HUB)}"
    return f"python -c \"import open_clip; open_clip.create_model('{model}', pretrained='{tag}')\""


def _local_file_fix(model: str, quick_gelu: bool) -> str:
    """``--model ... --pretrained FILE``, naming the QuickGELU twin for OpenAI-style weights
    (a plain name with a local file would silently run GELU)."""
    twin = f"{model}-quickgelu"
    if quick_gelu and not model.endswith("-quickgelu") and twin in model_names():
        return (
            f"--model {twin} --pretrained /path/to/{WEIGHT_FILES[0]} (the -quickgelu name: "
            "these weights were trained with QuickGELU)"
        )
    return f"--model {model} --pretrained /path/to/{WEIGHT_FILES[0]}"


def _check_hub_model(model: str, timeout_s: float, cache_dir: str | None) -> WeightsCheck:
    """An ``hf-hub:`` model: open_clip asks the hub for it unless ``HF_HUB_OFFLINE`` is set,
    so online the hub must answer and offline the cache must hold it."""
    repo_id = model.removeprefix(HF_HUB)
    config = cached_hub_file(repo_id, (CONFIG_FILE,), cache_dir)
    weights = cached_hub_file(repo_id, WEIGHT_FILES, cache_dir)
    cached = config is not None and weights is not None
    offline = offline_reason()
    if offline and cached:
        return WeightsCheck(WeightsSource.CACHED, weights)
    why = offline or download_problem([hub_file_url(repo_id, CONFIG_FILE)], timeout_s)
    if why:
        if cached:
            why += " (the cache holds them: set HF_HUB_OFFLINE=1 to use it)"
        local_fix = f"--model local-dir:/path/to/a/copy/of/{repo_id}"
        raise WeightsUnavailableError(
            unavailable_message(model, why, local_fix, download_command(model), repo_id)
        )
    source = WeightsSource.CACHED if cached else WeightsSource.DOWNLOAD
    return WeightsCheck(source, weights, urlparse(hub_endpoint()).netloc)


def _tag_hub_files(tag: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
    """``(repo id, files tried in order)`` of a tag on the hub; ``("", ())`` for url-only tags.

    open_clip reads ``hf_hub`` as ``org/repo/file`` (``org/repo/``: its default ``.bin``) and
    tries the ``.safetensors`` twin of a ``.bin`` / ``.pth`` file first.
    """
    hf_hub = str(tag.get("hf_hub", ""))
    if not hf_hub:
        return "", ()
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or WEIGHT_FILES[1]
    if filename == WEIGHT_FILES[1]:
        return repo_id, WEIGHT_FILES
    if filename.endswith((".bin", ".pth")):
        return repo_id, (filename[:-4] + ".safetensors", filename)
    return repo_id, (filename,)


def _cached_tag_file(tag: Mapping[str, Any], cache_dir: str | None) -> Path | None:
    """The tag's weights file in the local cache, or ``None``."""
    if tag.get("file"):
        return Path(tag["file"])
    repo_id, files = _tag_hub_files(tag)
    if repo_id:
        return cached_hub_file(repo_id, files, cache_dir)
    url = str(tag.get("url", ""))
    if url:
        target = Path(cache_dir or URL_CACHE).expanduser() / os.path.basename(url)
        return target if target.is_file() else None
    return None
