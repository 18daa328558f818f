"""Reproducing the papers: standard segmentation datasets read in their own layouts, labelled
through the labelling job and scored as the papers score them (``jobs.benchmark``).

Not the speed scripts of the top-level ``benchmarks/`` folder."""
