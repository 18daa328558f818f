"""pipeline: the distributed labelling job, from Parquet manifests to COCO masks.

Everything that touches Ray, storage or files lives here; model maths stays in ``gclip``.
"""

from pipeline.config import RunConfig, load_run_config
from pipeline.coordinator import ConfigChangedError, RunSummary, run_labelling
from pipeline.executors import InProcessExecutor, RayExecutor
from pipeline.manifest import ManifestError, plan_shards, read_manifest
from pipeline.model import SegmenterSpec
from pipeline.ray_session import connect, ray_executor_factory

__all__ = [
    "ConfigChangedError",
    "InProcessExecutor",
    "ManifestError",
    "RayExecutor",
    "RunConfig",
    "RunSummary",
    "SegmenterSpec",
    "connect",
    "load_run_config",
    "plan_shards",
    "ray_executor_factory",
    "read_manifest",
    "run_labelling",
]
