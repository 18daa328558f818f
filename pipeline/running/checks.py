"""What the driver checks before it starts Ray, so that bad input fails in a second: the
weights, the method against the model's depth, the device, the output folder, paths under
``ray job submit``, and an earlier run's format and settings in the output (named, old and
new, when they differ).

Each check raises :class:`pipeline.errors.InputError` (the job exits 2) naming the problem and
the fix; what can only be known on a worker (a GPU on a remote cluster, an hf-hub model's
depth) is said so in the log instead.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import gclip
from gclip.catalog import (
    HF_HUB,
    LOCAL_DIR,
    is_random,
    is_remote,
    local_dir,
    looks_like_path,
    model_depth,
)
from gclip.weights import check_weights, describe_weights
from pipeline.config import RunConfig, settings_changed
from pipeline.errors import ConfigChangedError, InputError
from pipeline.formats.layout import FORMAT_VERSION
from pipeline.formats.run_record import RunRecord
from pipeline.formats.storage import Storage, resolve

log = logging.getLogger(__name__)

# What ``ray job submit`` sets for the drivers it starts, and where it unpacks --working-dir.
RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_RAY_WORKING_DIR = "/runtime_resources/working_dir_files/"
_TAG_CHECK_S = 120.0  # importing open_clip and torch, plus the hub's own few seconds


def check_model(config: RunConfig) -> str:
    """The weights can be had, the method's options fit the model's depth, and a requested
    device exists (on a local run); return what the run will record as its weights.

    Raises:
        InputError: naming the problem and the fix.
    """
    labelling = config.labelling
    pretrained = labelling.pretrained
    try:
        if _is_tag(labelling.model, pretrained):
            _check_tag_apart(labelling.model, pretrained)
        else:
            check_weights(labelling.model, pretrained)
    except ValueError as err:  # WeightsUnavailableError is one: the message holds the fixes
        raise InputError(str(err)) from None
    if pretrained is not None and is_remote(pretrained):
        fs, path = resolve(pretrained)
        if not fs.get_file_info(path).is_file:
            raise InputError(f"Checkpoint {pretrained} does not exist (--pretrained).")
    depth = model_depth(labelling.model)
    if depth is None:
        log.info(
            "the depth of %s is known only once it is built: its method options are "
            "checked on the workers",
            labelling.model,
        )
    else:
        try:
            labelling.method.resolve(depth)
        except ValueError as err:
            raise InputError(f"{err} (--method-options, or the config's method)") from None
    _check_device(config)
    return describe_weights(labelling.model, pretrained)


def _is_tag(model: str, pretrained: str | None) -> bool:
    """An open_clip tag (``openai``): only open_clip knows it, and open_clip imports torch."""
    return not (
        local_dir(model) is not None
        or model.startswith((LOCAL_DIR, HF_HUB))
        or is_random(pretrained)
        or pretrained is None
        or looks_like_path(pretrained)
    )


def _check_tag_apart(model: str, pretrained: str | None) -> None:
    """:func:`check_weights` for a tag, in a child process: the driver plans a billion rows
    without torch (7 s and hundreds of MB to import), so it never imports it itself."""
    code = (
        "import json, sys\n"
        "from gclip.weights import check_weights\n"
        "try:\n"
        "    check_weights(sys.argv[1], sys.argv[2])\n"
        "except ValueError as err:\n"
        "    print(json.dumps(str(err)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, model, str(pretrained)],
        capture_output=True,
        text=True,
        timeout=_TAG_CHECK_S,
        check=False,
    )
    if done.returncode != 0:
        raise InputError(
            f"Could not check the weights {model} / {pretrained}: {done.stderr[-2000:]}"
        )
    if done.stdout.strip():
        raise ValueError(json.loads(done.stdout.strip().splitlines()[-1]))


def _check_device(config: RunConfig) -> None:
    if config.execution.device != "cuda":
        return
    if config.execution.address or os.environ.get("RAY_ADDRESS"):
        log.info("--device cuda: the workers of the cluster check that they have a GPU")
        return
    import torch  # only for this question: a local run that asks for CUDA

    if not torch.cuda.is_available():
        raise InputError(
            "--device cuda, but this machine has no usable CUDA device (torch sees none). "
            "Use --device auto (CUDA where a worker has a GPU) or --device cpu, or run on a "
            "cluster with GPUs (--address)."
        )


def check_output(output: str) -> None:
    """The output folder can be created and written: a local path must not name a file,
    and its nearest existing folder must be writable.

    Raises:
        InputError: naming the path and the fix.
    """
    if is_remote(output):
        return  # object stores: a denied write fails at the first write, with its message
    path = Path(output.removeprefix("file://")).expanduser()
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "the output" if existing == path else f"{existing}, a parent of the output,"
        raise InputError(
            f"--output {output}: {what} is a file, not a folder. Give a folder path (it is "
            "created if missing)."
        )
    if not os.access(existing, os.W_OK | os.X_OK) or _read_only(existing):
        raise InputError(
            f"--output {output}: {existing} cannot be written (read-only or no permission). "
            "Give a folder on a writable disk, or an s3:// URI."
        )


def _read_only(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def under_ray_job() -> bool:
    """Whether this driver was started by ``ray job submit`` with a working directory (its
    current folder is then a temporary package Ray deletes)."""
    job = os.environ.get(RAY_JOB_CONFIG)
    if job:
        try:
            if json.loads(job).get("runtime_env", {}).get("working_dir"):
                return True
        except (ValueError, AttributeError):
            pass
    return _RAY_WORKING_DIR in os.getcwd()


def check_paths_under_ray_job(config: RunConfig) -> None:
    """Under ``ray job submit --working-dir``, refuse a relative local output or manifest:
    it would land in (or be read from) Ray's temporary copy of the working directory.

    Raises:
        InputError: naming the path and the fix.
    """
    if not under_ray_job():
        return
    for flag, value in (("--output", config.output), ("--manifest", config.manifest)):
        if (
            not is_remote(value)
            and not Path(value.removeprefix("file://")).expanduser().is_absolute()
        ):
            raise InputError(
                f"{flag} {value} is a relative path, and this driver runs inside the job's "
                f"temporary copy of --working-dir ({os.getcwd()}), which Ray deletes: give "
                "an absolute path on storage every node shares, or an s3:// URI."
            )


def check_format(storage: Storage, previous: RunRecord | None) -> None:
    """Refuse an output written in another format: its shards cannot be mixed with new ones."""
    if previous is None or previous.format_version == FORMAT_VERSION:
        return
    found = previous.format_version
    age = "an older" if found < FORMAT_VERSION else "a newer"
    raise ConfigChangedError(
        f"{storage.root} was written by {age} gclip-label (output format {found}; this "
        f"version writes format {FORMAT_VERSION}). Its shards cannot be mixed with new ones: "
        "label into a new --output."
    )


def check_settings(
    storage: Storage, previous: RunRecord | None, config: RunConfig, vocabulary: gclip.Vocabulary
) -> None:
    """Before Ray: refuse a previous run's output whose labelling settings differ, naming
    each difference (the fingerprint, after resolution, is the last word)."""
    if previous is None or previous.fingerprint is None:
        return
    changed = differences(previous, config, vocabulary)
    if changed:
        raise ConfigChangedError(
            f"{storage.root} holds a run made with other labelling settings:\n  "
            + "\n  ".join(changed)
            + "\nUse a new --output, or pass --allow-config-change to keep its finished shards "
            "and label the rest with the new settings."
        )


def differences(previous: RunRecord, config: RunConfig, vocabulary: gclip.Vocabulary) -> list[str]:
    """The labelling settings and vocabulary of ``config`` that differ from a previous run's,
    as ``name: old -> new`` lines."""
    changed = settings_changed(previous.config, config.to_json())
    before = gclip.vocabulary.parse_json(previous["vocabulary"])
    if before.fingerprint != vocabulary.fingerprint:
        changed.append(
            f"vocabulary: {len(before.classes)} classes (sha {before.fingerprint[:12]}) -> "
            f"{len(vocabulary.classes)} classes (sha {vocabulary.fingerprint[:12]})"
        )
    return changed
