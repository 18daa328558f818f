"""Reading a run back: scores against ground truth and previews."""
