"""JSON Schemas (draft 2020-12) of every file gclip-label reads or writes.

``validate(instance, "vocabulary")`` checks ``instance`` against ``vocabulary.schema.json``;
schemas refer to each other by ``$id``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from referencing import Registry, Resource


class SchemaError(ValueError):
    """An instance does not match its schema; the message names the offending path."""


def names() -> list[str]:
    """Every schema shipped here, by short name."""
    files = resources.files(__package__).iterdir()
    return sorted(
        f.name.removesuffix(".schema.json") for f in files if f.name.endswith(".schema.json")
    )


@cache
def load(name: str) -> dict[str, Any]:
    """The schema ``<name>.schema.json`` shipped in this package."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


@cache
def _registry() -> Registry:
    resources_ = [(load(n)["$id"], Resource.from_contents(load(n))) for n in names()]
    return Registry().with_resources(resources_)


def validate(instance: Any, name: str) -> None:
    """Raise :class:`SchemaError` naming the first problem if ``instance`` breaks schema ``name``."""
    validator = jsonschema.Draft202012Validator(load(name), registry=_registry())
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        message = error.message if len(error.message) <= 300 else error.message[:300] + " ..."
        raise SchemaError(f"{name}: at {where}: {message}")
