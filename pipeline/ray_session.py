"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or an embedded one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from pipeline.config import RunConfig
from pipeline.executors import Executor, RayExecutor
from pipeline.model import SegmenterSpec
from pipeline.worker import ShardSettings

log = logging.getLogger(__name__)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """``ray.init`` for the job's duration; under ``ray job submit`` the driver joins the cluster."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, object] = {"include_dashboard": False} if not address else {}
    # The working dir reaches workers through runtime_env when the job is submitted; an
    # embedded Ray shares this process's sys.path with its workers through the environment.
    ray.init(address=address, log_to_driver=True, **kwargs)  # type: ignore[arg-type]
    log.info("Ray: %s", "cluster at " + address if address else "embedded local instance")
    try:
        yield
    finally:
        ray.shutdown()


def ray_executor_factory(config: RunConfig, settings: ShardSettings) -> Executor:
    """One Ray actor per worker, each building the configured segmenter once."""
    spec = SegmenterSpec(
        config.model, config.pretrained, config.method, config.method_options, config.device
    )
    return RayExecutor(spec, settings, config.output, config.num_workers)
