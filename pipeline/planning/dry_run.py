"""What a run would do, said before it does anything (``--dry-run``)."""

from __future__ import annotations

from pipeline.formats import layout
from pipeline.planning.manifest import Manifest, read_range
from pipeline.planning.plan import Plan

# Rough output sizes, measured on demo-world runs with four or five classes an image: the RLE
# strings (in the COCO file and again, compressed, in Parquet) grow with the image's sides,
# an indexed PNG with its area.
_BYTES_PER_SIDE_PIXEL = 16.0
_PNG_BYTES = (800.0, 0.03)  # palette and headers, then per pixel
_ASSUMED_HW = (375, 500)  # when the manifest has no width and height columns
_SAMPLE_ROWS = 1000


def describe_plan(
    manifest: Manifest, plan: Plan, done: int, output: str, png_labels: bool, merge_limit: int
) -> str:
    """Images and shards (new, kept, done), the files a run writes, and their rough size."""
    h, w = _typical_size(manifest)
    per_image = _BYTES_PER_SIDE_PIXEL * (h + w)
    if png_labels:
        per_image += _PNG_BYTES[0] + _PNG_BYTES[1] * h * w
    merged = merge_limit > 0 and plan.images <= merge_limit
    shard = "shard-NNNNNN"
    files = [
        (f"{layout.ANNOTATION_TABLES}/{shard}.parquet", "annotations, one row each"),
        (f"{layout.SUMMARY_TABLES}/{shard}.parquet", "per image and class"),
        (f"{layout.COCO_SHARDS}/{shard}.json", "a COCO file per shard"),
        (f"{layout.SHARDS}/{shard}.json", "markers: counts and failed images"),
        (f"{layout.LEDGER}/", f"progress; {layout.RUN}"),
    ]
    if png_labels:
        files.append((f"{layout.LABELS}/*.png", "indexed label maps"))
    files.append(
        (
            f"{layout.ANNOTATIONS}, {layout.FAILURES}",
            "merged at the end" if merged else f"not merged (over --merge-limit {merge_limit})",
        )
    )
    return "\n".join(
        [
            f"manifest {manifest.location}: {manifest.rows} images in "
            f"{len(manifest.files)} file(s)",
            f"plan: {len(plan.shards)} shards ({plan.kept} kept from the previous plan, "
            f"{done} done), {plan.images} images",
            f"output {output}:",
            *_columns(files, indent="  "),
            f"estimated size: {human_size(per_image * plan.images)} (about "
            f"{human_size(per_image)} an image of {w}x{h}; rough)",
        ]
    )


def human_size(num_bytes: float) -> str:
    """``num_bytes`` in the largest decimal unit that keeps the number under 1000, with three
    significant digits: ``512 B``, ``7.52 KB``, ``38.4 MB``, ``123 GB``."""
    value = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if round(value) < 1000 or unit == "TB":
            break
        value /= 1000
    if unit == "B":
        return f"{value:.0f} B"
    decimals = 2 if round(value, 2) < 10 else 1 if round(value, 1) < 100 else 0
    return f"{value:.{decimals}f} {unit}"


def _columns(rows: list[tuple[str, str]], indent: str) -> list[str]:
    """Two-column rows, the second column aligned two spaces past the longest first."""
    width = max(len(left) for left, _ in rows)
    return [f"{indent}{left:<{width}}  {right}" for left, right in rows]


def _typical_size(manifest: Manifest) -> tuple[int, int]:
    """Median height and width of the first rows, if the manifest says; else a VOC-like size."""
    if not {"width", "height"} <= set(manifest.columns) or not manifest.files:
        return _ASSUMED_HW
    first = manifest.files[0]
    table = read_range(first.uri, 0, min(_SAMPLE_ROWS, first.rows))
    heights = sorted(v for v in table["height"].to_pylist() if v)
    widths = sorted(v for v in table["width"].to_pylist() if v)
    if not heights or not widths:
        return _ASSUMED_HW
    return heights[len(heights) // 2], widths[len(widths) // 2]
