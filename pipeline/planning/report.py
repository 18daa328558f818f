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
    lines = [
        f"manifest {manifest.location}: {manifest.rows} images in {len(manifest.files)} file(s)",
        f"plan: {len(plan.shards)} shards ({plan.kept} kept from the previous plan, {done} done), "
        f"{plan.images} images",
        f"output {output}:",
        f"  {layout.ANNOTATION_TABLES}/shard-NNNNNN.parquet  annotations, one row each",
        f"  {layout.SUMMARY_TABLES}/shard-NNNNNN.parquet      per image and class",
        f"  {layout.COCO_SHARDS}/shard-NNNNNN.json            a COCO file per shard",
        f"  {layout.SHARDS}/shard-NNNNNN.json          markers: counts and failed images",
        f"  {layout.LEDGER}/                           progress; {layout.RUN}",
    ]
    if png_labels:
        lines.append(f"  {layout.LABELS}/*.png                       indexed label maps")
    lines.append(
        f"  {layout.ANNOTATIONS}, {layout.FAILURES}     "
        + ("merged at the end" if merged else f"not merged (over --merge-limit {merge_limit})")
    )
    lines.append(
        f"estimated size: {per_image * plan.images / 1e9:.2f} GB (about {per_image / 1e3:.0f} kB "
        f"an image of {w}x{h}; rough)"
    )
    return "\n".join(lines)


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
