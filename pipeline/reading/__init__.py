"""Reading a run back: scores against ground truth, previews, and its labelled images as a
PyTorch dataset (:class:`LabelledImages`)."""

from pipeline.reading.labelled_images import LabelledImages

__all__ = ["LabelledImages"]
