"""Comparing labelling settings: one seeded sample of a manifest labelled under 2-8 variants,
scored and drawn side by side (``python -m jobs.compare``)."""

from pipeline.comparing.comparison import Comparison, KeptOpen, VariantFailed, compare
from pipeline.comparing.sample import draw_sample
from pipeline.comparing.variants import Variant, flag_settings, parse_variants

__all__ = [
    "Comparison",
    "KeptOpen",
    "Variant",
    "VariantFailed",
    "compare",
    "draw_sample",
    "flag_settings",
    "parse_variants",
]
