"""Benchmarks: standard segmentation datasets read in their own layouts, scored as papers do."""
