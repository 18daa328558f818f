"""Where a run's model work happens: resolving the recipe once, then the shard executor.

:class:`RayBackend` resolves in a Ray task (so the driver never imports torch) and labels on
Ray actors; :class:`LocalBackend` does both in this process, with the real model or a stand-in
(tests, debugging).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from pipeline.config import RunConfig
from pipeline.errors import SetupError, describe, plain
from pipeline.planning.manifest import Manifest
from pipeline.running.executors import Executor, InProcessExecutor
from pipeline.running.ray_executor import RayExecutor
from pipeline.running.recipe import Resolution, SegmenterSpec, resolve_recipe
from pipeline.running.stages import ShardSettings
from pipeline.running.storage_probe import check_shared_storage
from pipeline.running.worker import SegmenterFactory

log = logging.getLogger(__name__)


class Backend(Protocol):
    def check_storage(self, manifest: Manifest, output: str) -> None:
        """Refuse a run whose manifest or output some worker could not reach; called once
        per run, before :meth:`resolve`.

        Raises:
            InputError: naming where the workers run, the path they cannot use and the fix.
        """
        ...

    def resolve(
        self, spec: SegmenterSpec, calibration_uris: tuple[str, ...], side: int
    ) -> Resolution:
        """Resolve the recipe on the model (see :func:`pipeline.running.recipe.resolve_recipe`).

        Raises:
            SetupError: the model or its options cannot work; the cause is in the message.
        """
        ...

    def executor(
        self, config: RunConfig, spec: SegmenterSpec, settings: ShardSettings
    ) -> Executor: ...

    def close(self) -> None: ...


class LocalBackend:
    """In this process. ``factory`` stands in for the model (a fake segmenter); without one,
    the resolved recipe builds the real one."""

    def __init__(self, factory: SegmenterFactory | None = None) -> None:
        self._factory = factory

    def check_storage(self, manifest: Manifest, output: str) -> None:
        pass  # this process reads and writes them: the driver's own checks covered it

    def resolve(
        self, spec: SegmenterSpec, calibration_uris: tuple[str, ...], side: int
    ) -> Resolution:
        if self._factory is not None:
            return Resolution(spec)
        try:
            return resolve_recipe(spec, calibration_uris, side)
        except Exception as err:
            raise SetupError(describe(err)) from err

    def executor(self, config: RunConfig, spec: SegmenterSpec, settings: ShardSettings) -> Executor:
        return InProcessExecutor(self._factory or spec, settings, config.output)

    def close(self) -> None:
        pass


class RayBackend:
    """Ray, connected on first use: resolution in a task, labelling on one actor per worker.
    ``factory`` stands in for the model on every actor, as in :class:`LocalBackend`."""

    def __init__(self, address: str | None = None, factory: SegmenterFactory | None = None) -> None:
        self._address = address
        self._factory = factory
        self._owns_ray: bool | None = None

    def check_storage(self, manifest: Manifest, output: str) -> None:
        """Every node of a cluster sees the manifest and the output (nothing is sent on one
        node); see :mod:`pipeline.running.storage_probe`."""
        self._ray()
        check_shared_storage(manifest, output)

    def resolve(
        self, spec: SegmenterSpec, calibration_uris: tuple[str, ...], side: int
    ) -> Resolution:
        ray = self._ray()
        if self._factory is not None:
            return Resolution(spec)
        log.info("resolving the model %s once, in a Ray task (depth, method blocks)", spec.model)
        # A Ray task retries a lost worker (max_retries) but not an error of ours.
        task = ray.remote(num_cpus=1, max_retries=2)(resolve_recipe)
        try:
            resolution: Resolution = ray.get(task.remote(spec, calibration_uris, side))
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None) or err
            raise SetupError(describe(cause), plain(str(err))) from None
        return resolution

    def executor(self, config: RunConfig, spec: SegmenterSpec, settings: ShardSettings) -> Executor:
        self._ray()
        return RayExecutor(
            self._factory or spec,
            settings,
            config.output,
            config.execution.num_workers,
            shard_timeout_s=config.execution.shard_timeout_s,
            model_cpus=config.execution.model_cpus,
        )

    def close(self) -> None:
        if self._owns_ray:
            import ray

            ray.shutdown()
        self._owns_ray = None

    def _ray(self) -> Any:
        import ray

        from pipeline.running.ray_session import connect

        if self._owns_ray is None:
            self._owns_ray = connect(self._address)
        return ray
