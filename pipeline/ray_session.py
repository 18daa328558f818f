"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or an embedded one.

Ray is started only when there is work: validation and planning run before it, so bad input
fails in a second, not after Ray's start-up.
"""

from __future__ import annotations

import logging
import os

from pipeline.config import RunConfig
from pipeline.executors import Executor, RayExecutor
from pipeline.manifest import first_uris
from pipeline.model import SegmenterSpec
from pipeline.worker import ShardSettings

log = logging.getLogger(__name__)


def connect(address: str | None) -> bool:
    """Join a cluster or start an embedded Ray; return whether this call started it.

    Under ``ray job submit`` the driver runs on the cluster with ``RAY_ADDRESS`` set and joins it.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        log.info("Ray: joined the cluster at %s", address)
    else:
        ray.init(include_dashboard=False)
        log.info("Ray: started an embedded local instance")
    return True


def ray_executor_factory(config: RunConfig, settings: ShardSettings) -> Executor:
    """One Ray actor per worker, each building the configured segmenter once."""
    owns_ray = connect(config.address)
    return RayExecutor(
        segmenter_spec(config), settings, config.output, config.num_workers, owns_ray=owns_ray
    )


def segmenter_spec(config: RunConfig, calibration_images: int = 8) -> SegmenterSpec:
    """The workers' segmenter; ``global_blocks="auto"`` calibrates on the manifest's first images."""
    uris: tuple[str, ...] = ()
    if config.method == "gclip" and config.method_options.get("global_blocks") in (None, "auto"):
        uris = tuple(first_uris(config.manifest, calibration_images))
    return SegmenterSpec(
        config.model,
        config.pretrained,
        config.method,
        config.method_options,
        config.device,
        calibration_uris=uris,
        calibration_crop=config.inference_config().crop,
    )
