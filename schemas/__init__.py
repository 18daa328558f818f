"""JSON Schemas (draft 2020-12) of every file gclip-label reads or writes.

``validate(instance, "vocabulary")`` checks ``instance`` against ``vocabulary.schema.json``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Any

import jsonschema


class SchemaError(ValueError):
    """An instance does not match its schema; the message names the offending path."""


@cache
def load(name: str) -> dict[str, Any]:
    """The schema ``<name>.schema.json`` shipped in this package."""
    text = resources.files(__package__).joinpath(f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(schema)
    return schema


def validate(instance: Any, name: str) -> None:
    """Raise :class:`SchemaError` naming the first problem if ``instance`` breaks schema ``name``."""
    validator = jsonschema.Draft202012Validator(load(name))
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise SchemaError(f"{name}: at {where}: {error.message}")
