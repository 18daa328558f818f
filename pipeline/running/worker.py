"""The model worker: one segmenter, built once, labelling decoded shards.

:class:`LabelWorker` is a plain class: on Ray its subclass
:class:`pipeline.running.ray_worker.ChainWorker` is the actor (one model, one GPU where the
cluster has them) and :class:`pipeline.running.executors.InProcessExecutor` holds one in this
process. The work itself is :mod:`pipeline.running.stages`, which knows nothing about Ray.
"""

from __future__ import annotations

import os
import socket
import traceback
from collections.abc import Callable
from dataclasses import replace

from pipeline.errors import SetupError, describe, is_out_of_memory, plain
from pipeline.formats.storage import Storage
from pipeline.running.stages import (
    DecodedShard,
    ProgressHook,
    SegmentedShard,
    SegmenterLike,
    ShardResult,
    ShardSettings,
    ShardTask,
    process_shard,
    segment_shard,
)

SegmenterFactory = Callable[[], SegmenterLike]


class LabelWorker:
    """Builds the segmenter once, then labels decoded shards with :func:`segment_shard`.

    Construction does no work, so a Ray restart always succeeds and a failing model build
    surfaces as a :class:`SetupError` from :meth:`setup`, with its cause.

    Args:
        factory: builds the segmenter (a :class:`pipeline.running.recipe.SegmenterSpec`, or
            a stand-in in tests).
        settings: what every shard needs besides the segmenter.
        output: the run's output folder.
        on_progress: told which images are labelled, call by call (progress within shards;
            see :data:`pipeline.running.stages.ProgressHook`).
    """

    def __init__(
        self,
        factory: SegmenterFactory,
        settings: ShardSettings,
        output: str,
        on_progress: ProgressHook | None = None,
    ) -> None:
        self._factory = factory
        self._settings = settings
        self._output = output
        self._on_progress = on_progress
        self._segmenter: SegmenterLike | None = None
        self._node: str | None = None

    def setup(self) -> int:
        """Build the segmenter if not built yet; return the worker's process id.

        Raises:
            SetupError: the segmenter cannot be built (out of memory is raised as it is: a
                lost resource, retried like a dead worker).
        """
        if self._segmenter is None:
            try:
                self._segmenter = self._factory()
            except Exception as err:
                if is_out_of_memory(err):
                    raise
                raise SetupError(describe(err), plain(traceback.format_exc())) from err
        return os.getpid()

    def segment(self, decoded: DecodedShard) -> SegmentedShard:
        self.setup()  # a no-op unless Ray restarted this actor
        assert self._segmenter is not None
        segmented = segment_shard(self._segmenter, decoded, self._settings, self._on_progress)
        return replace(segmented, node=self.node())

    def node_id(self) -> str | None:
        """This actor's Ray node id (``None`` outside Ray): its host tasks are placed there."""
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def node(self) -> str:
        """Where this worker runs: its host, and its Ray node's id when it is a Ray actor."""
        if self._node is None:
            self._node = socket.gethostname()
            try:
                import ray

                if ray.is_initialized():
                    self._node += f" (node {ray.get_runtime_context().get_node_id()[:12]})"
            except ImportError:  # pragma: no cover - Ray is a dependency
                pass
        return self._node

    def process(self, task: ShardTask) -> ShardResult:
        """All three stages, in this process."""
        self.setup()
        assert self._segmenter is not None
        storage = Storage(self._output)
        result = process_shard(self._segmenter, task, self._settings, storage, self._on_progress)
        return replace(result, node=self.node())

    def pid(self) -> int:
        """The worker's process id: answers once the actor is (re)built; tests kill it."""
        return os.getpid()
