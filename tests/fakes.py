"""A fake segmenter behind the pipeline's SegmenterLike interface (fast, deterministic)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from gclip import Segmentation


class BrightnessSegmenter:
    """Class 1 where a pixel is bright (mean > 127), else class 0; confidence 0.5 + |m-127.5|/255 (in [0.5, 1])."""

    def __init__(
        self,
        fail_on_width: int | None = None,
        always_fail: bool = False,
        error: type[Exception] = ValueError,
    ) -> None:
        self.fail_on_width = fail_on_width
        self.always_fail = always_fail
        self.error = error
        self.calls = 0

    def segment(self, images, vocabulary, config=None):
        self.calls += 1
        if self.always_fail:
            raise ZeroDivisionError("a bug in the model code")
        out = []
        for image in images:
            if image.shape[1] == self.fail_on_width:
                raise self.error(f"width {image.shape[1]} does not fit")
            m = image.astype(np.float32).mean(axis=2)
            labels = (m > 127).astype(np.uint8)
            out.append(Segmentation(labels, (0.5 + np.abs(m - 127.5) / 255).astype(np.float32)))
        return out

    def __call__(self):  # a factory that builds itself (the executors take factories)
        return self


class OutOfMemoryError(RuntimeError):
    """Named like ``torch.cuda.OutOfMemoryError``, which the pipeline recognises by name."""


class OnceThen:
    """Wraps :class:`BrightnessSegmenter`: the first call that sees ``marker`` (a file) removes
    it and misbehaves (``"hang"`` sleeps for an hour, ``"oom"`` raises
    :class:`OutOfMemoryError`); every other call labels normally. The marker file makes the
    misbehaviour happen once across processes and actor restarts."""

    def __init__(self, marker, mode: str) -> None:
        self.marker, self.mode = str(marker), mode
        self.inner = BrightnessSegmenter()

    def segment(self, images, vocabulary, config=None):
        import os
        import time

        try:
            os.unlink(self.marker)
        except FileNotFoundError:
            return self.inner.segment(images, vocabulary, config)
        if self.mode == "hang":
            time.sleep(3600)
        raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def __call__(self):
        return self


class BrokenFactory:
    """A segmenter factory that cannot build: counts its calls in ``log`` (a file)."""

    def __init__(self, log) -> None:
        self.log = str(log)

    def __call__(self):
        with open(self.log, "a") as handle:
            handle.write("called\n")
        raise ValueError("cannot read weights /models/vit.pt: truncated file")


class Slowed:
    """A segmenter factory whose segmenters take ``delay`` seconds more per call (the same
    labels): a worker killed while the model works is then certain to hold a shard."""

    def __init__(self, factory, delay: float) -> None:
        self.factory, self.delay = factory, delay

    def __call__(self):
        return _SlowSegmenter(self.factory(), self.delay)


class _SlowSegmenter:
    def __init__(self, inner, delay: float) -> None:
        self.inner, self.delay = inner, delay

    def segment(self, images, vocabulary, config=None):
        import time

        time.sleep(self.delay)
        return self.inner.segment(images, vocabulary, config)


class Recording:
    """A segmenter factory whose segmenters record every call's vocabulary and inference
    config (and the image shapes) before labelling as ``inner`` does. A class attribute
    holds the calls, so in-process executors share them with the test."""

    calls: ClassVar[list[tuple[tuple[tuple[int, ...], ...], object, object]]] = []

    def __init__(self, inner=None) -> None:
        self.inner = inner or BrightnessSegmenter()

    def segment(self, images, vocabulary, config=None):
        Recording.calls.append((tuple(i.shape for i in images), vocabulary, config))
        return self.inner.segment(images, vocabulary, config)

    def __call__(self):
        return self


class Killer:
    """A segmenter whose process dies (as the kernel's OOM killer ends it) whenever a call
    holds an image ``height`` pixels high, so the worker is lost rather than an error raised
    (13: ``test_pipeline_local.make_dataset``'s image 3)."""

    def __init__(self, height: int = 13) -> None:
        self.height = height
        self.inner = BrightnessSegmenter()

    def segment(self, images, vocabulary, config=None):
        import os

        if any(image.shape[0] == self.height for image in images):
            os._exit(137)
        return self.inner.segment(images, vocabulary, config)

    def __call__(self):
        return self
