"""The variants of a comparison: named ``--config`` documents, layered over the command line.

A variant is ``NAME=CONFIG.json``, a run config (``schemas/run_config.schema.json``) holding the
settings it tries. What it leaves out comes from the comparison's command line (the labelling
job's own flags), then, as for any run, the model's checkpoint and the defaults: the variant's
file wins over the command line, key by key (``inference`` and ``method`` options too). Each
variant's document, with the sample as its manifest and ``variants/NAME`` as its output, is
what ``jobs.label --config`` runs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import schemas
from gclip import load_vocabulary
from pipeline.config import load_run_config
from pipeline.errors import InputError
from pipeline.formats.checkpoints import shipped_settings
from pipeline.formats.coco import categories
from pipeline.formats.storage import read_bytes
from pipeline.running.checks import check_model

MIN_VARIANTS, MAX_VARIANTS = 2, 8
VARIANTS = "variants"  # DIR/variants/NAME: each variant's labelling output
CONFIGS = "configs"  # DIR/configs/NAME.json: the document each variant was labelled with
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_OWN = ("manifest", "output")  # the comparison's: the sample in, variants/NAME out


@dataclass(frozen=True, slots=True)
class Variant:
    """One variant as given.

    Attributes:
        name: its column in the page and its folder, ``variants/<name>``.
        file: the ``--config`` file it was read from.
        settings: the file's document (checked against the run config's schema).
    """

    name: str
    file: str
    settings: Mapping[str, Any]


def parse_variants(specs: Sequence[str]) -> list[Variant]:
    """Read ``NAME=CONFIG.json`` specs, in order.

    Raises:
        InputError: fewer than 2 or more than 8, a spec without ``=``, a name that is not a
            folder name or given twice, a file that cannot be read or is not a run config, or
            a file that sets the comparison's own ``manifest`` or ``output``; each names the
            variant and the fix.
    """
    if not MIN_VARIANTS <= len(specs) <= MAX_VARIANTS:
        raise InputError(
            f"{len(specs)} variant(s) given; a comparison takes {MIN_VARIANTS} to "
            f"{MAX_VARIANTS}: give --variant NAME=CONFIG.json that many times."
        )
    variants: list[Variant] = []
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep or not file:
            raise InputError(f"--variant {spec}: write it NAME=CONFIG.json (e.g. base=base.json).")
        if not _NAME.match(name):
            raise InputError(
                f"--variant {spec}: the name {name!r} must be a folder name: letters, digits, "
                "'.', '_' or '-', at most 64, starting with a letter or digit."
            )
        if name in (v.name for v in variants):
            raise InputError(f"--variant {spec}: the name {name!r} is given twice; rename one.")
        variants.append(Variant(name, file, _read_settings(name, file)))
    return variants


def _read_settings(name: str, file: str) -> dict[str, Any]:
    where = f"variant {name} ({file})"
    try:
        settings = json.loads(read_bytes(file))
    except (OSError, ValueError) as err:
        raise InputError(f"{where}: cannot be read as JSON: {err}. Fix the file.") from err
    if not isinstance(settings, dict):
        raise InputError(f"{where}: a run config is a JSON object, {{...}}. Fix the file.")
    try:
        schemas.validate(settings, "run_config")
    except ValueError as err:
        raise InputError(
            f"{where}: not a run config: {err}. Fix the file (schemas/run_config.schema.json "
            "lists the settings; `python -m jobs.label --help` explains each)."
        ) from err
    own = [k for k in _OWN if k in settings]
    if own:
        raise InputError(
            f"{where}: sets {', '.join(own)}, which the comparison decides (the sample in, "
            f"{VARIANTS}/{name} out). Remove {'them' if len(own) > 1 else 'it'} from the file."
        )
    return settings


def flag_settings(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The labelling job's flags as given (:func:`pipeline.cli.overrides`: ``None`` for not
    given, ``method_options`` apart) as a run config document of the settings set."""
    settings = {
        k: v for k, v in flags.items() if v is not None and k not in ("method", "method_options")
    }
    method = {**({"name": flags["method"]} if flags.get("method") else {})}
    method.update(flags.get("method_options") or {})
    if method:
        settings["method"] = method
    if not settings.get("inference"):
        settings.pop("inference", None)
    return settings


def layered(below: Mapping[str, Any], above: Mapping[str, Any]) -> dict[str, Any]:
    """``above`` over ``below``, key by key; ``method`` and ``inference`` option by option."""
    merged = {**below, **above}
    for key in ("method", "inference"):
        if key in below and key in above:
            merged[key] = {**_options(below[key]), **_options(above[key])}
    return merged


def _options(value: str | Mapping[str, Any]) -> dict[str, Any]:
    return {"name": value} if isinstance(value, str) else dict(value)


@dataclass(frozen=True, slots=True)
class VariantRun:
    """A variant ready to label.

    Attributes:
        variant: as given.
        document: the run config ``jobs.label --config`` runs for it.
        categories: the COCO categories its vocabulary gives, in class-index order.
    """

    variant: Variant
    document: Mapping[str, Any]
    categories: tuple[dict[str, Any], ...]

    @property
    def output(self) -> str:
        return str(self.document["output"])


def prepare_variant(
    variant: Variant, command_line: Mapping[str, Any], manifest: str, output: str
) -> VariantRun:
    """A variant's run: its settings over the command line's, ``manifest`` (the sample) and
    ``output``; checked as ``jobs.label`` checks a run before any work (but for the manifest).

    Raises:
        InputError: the layered settings are not a valid run (a model the catalog does not
            know, weights that cannot be had, a method option that does not exist, a
            vocabulary that cannot be read...), naming the variant.
    """
    document = {**layered(command_line, variant.settings), "manifest": manifest, "output": output}
    try:
        config = load_run_config(document, {}, shipped_settings)
        check_model(config)
        labelling = config.labelling
        vocabulary = load_vocabulary(
            config.vocabulary, labelling.background_first_line, labelling.threshold
        )
    except (OSError, ValueError) as err:
        raise InputError(f"variant {variant.name} ({variant.file}): {err}") from err
    return VariantRun(variant, document, tuple(categories(vocabulary)))


def same_classes(runs: Sequence[VariantRun]) -> tuple[dict[str, Any], ...]:
    """The variants' categories, which scoring on one ground truth needs to be the same.

    Raises:
        InputError: a variant labels other classes (ids or names) than the first.
    """
    first = runs[0]
    for run in runs[1:]:
        if [(c["id"], c["name"]) for c in run.categories] != [
            (c["id"], c["name"]) for c in first.categories
        ]:
            raise InputError(
                f"variant {run.variant.name} labels other classes than {first.variant.name}: "
                "scores on one ground truth need the same classes. Give the variants "
                "vocabularies with the same classes in the same order (templates and synonyms "
                "may differ)."
            )
    return first.categories
