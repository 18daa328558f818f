"""``--where``: filters on a run's ``summary/`` table, in a small syntax parsed, never eval'd.

A filter is clauses joined by ``AND`` (several ``--where`` flags are ANDed too); a clause is
``NAME OP NUMBER`` with ``OP`` one of ``> >= < <= == !=``:

* ``NAME`` a class of the run's vocabulary (``car>0.1``, ``"traffic light" >= 0.05``): the
  share of the image's pixels labelled with that class (``summary/``'s ``pixel_fraction``;
  0 where the class is absent);
* ``NAME`` ``mean_confidence``: the mean confidence of the image's labelled pixels, weighted
  by pixel share as the report's review queue computes it; an image with no labelled pixel has
  none and passes no such clause.

Evaluated with pyarrow compute per shard: one shard's summary rows in memory at a time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import InputError
from pipeline.reading.report_data import per_image_confidence

MEAN_CONFIDENCE = "mean_confidence"
SUMMARY_COLUMNS = ["image_id", "category", "pixel_fraction", "mean_confidence"]
_OPERATORS = {
    ">=": pc.greater_equal,
    "<=": pc.less_equal,
    "==": pc.equal,
    "!=": pc.not_equal,
    ">": pc.greater,
    "<": pc.less,
}
_CLAUSE = re.compile(
    r"^\s*(?P<name>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
_AND = re.compile(r"\s+AND\s+|\s*&&\s*", re.IGNORECASE)
_HELP = (
    'Write clauses as NAME OP NUMBER joined by AND, e.g. --where "car>0.1 AND '
    "mean_confidence>=0.5\"; NAME is a class of the run's vocabulary or mean_confidence."
)


@dataclass(frozen=True, slots=True)
class Clause:
    """``name op value``: ``name`` a class name or :data:`MEAN_CONFIDENCE`."""

    name: str
    op: str
    value: float

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.value:g}"


def parse_where(texts: Sequence[str], class_names: Sequence[str]) -> tuple[Clause, ...]:
    """The clauses of ``--where`` values, checked against the run's class names.

    Raises:
        InputError: a clause does not parse or names no class; the message shows the syntax.
    """
    clauses = []
    known = set(class_names)
    for text in texts:
        for part in _AND.split(text.strip()):
            match = _CLAUSE.match(part)
            if not match:
                raise InputError(f"--where: cannot read {part!r}. {_HELP}")
            name = match["name"].strip().strip("\"'")
            if name != MEAN_CONFIDENCE and name not in known:
                shown = ", ".join(sorted(known)[:20]) + (" ..." if len(known) > 20 else "")
                raise InputError(
                    f"--where: {name!r} is neither {MEAN_CONFIDENCE} nor a class of the run "
                    f"(classes: {shown}). {_HELP}"
                )
            clauses.append(Clause(name, match["op"], float(match["value"])))
    return tuple(clauses)


def where_mask(clauses: Sequence[Clause], ids: pa.Array, summary: pa.Table) -> np.ndarray:
    """``N`` bool: which of a shard's ``ids`` pass every clause.

    Args:
        clauses: from :func:`parse_where` (none: every image passes).
        ids: ``N`` manifest ids of the shard's images.
        summary: the shard's ``summary/`` rows, :data:`SUMMARY_COLUMNS` at least.
    """
    passed = np.ones(len(ids), bool)
    for clause in clauses:
        values = _values(clause.name, ids, summary)
        result = _OPERATORS[clause.op](values, pa.scalar(clause.value, pa.float64()))
        passed &= np.asarray(pc.fill_null(result, False).to_numpy(zero_copy_only=False), bool)
    return passed


def _values(name: str, ids: pa.Array, summary: pa.Table) -> pa.Array:
    """``N`` float64 per image of ``ids``: the clause's quantity (null: the image has none)."""
    if name == MEAN_CONFIDENCE:
        if summary.num_rows == 0:
            return pa.nulls(len(ids), pa.float64())
        grouped_ids, means = per_image_confidence(summary)
        return pc.take(pa.array(means, pa.float64()), pc.index_in(ids, grouped_ids))
    rows = summary.filter(pc.equal(summary["category"], name))
    shares = rows["pixel_fraction"].combine_chunks().cast(pa.float64())
    found = pc.take(shares, pc.index_in(ids, rows["image_id"].combine_chunks()))
    return pc.fill_null(found, 0.0)  # no summary row: the class covers no pixel
