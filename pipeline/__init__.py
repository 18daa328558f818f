"""pipeline: the distributed labelling job, from Parquet manifests to COCO masks.

Everything that touches Ray, storage or files lives here; model maths stays in ``gclip``.
Importing it imports neither torch nor Ray: a driver validates and plans without them.
"""

from pipeline.config import RunConfig, load_run_config
from pipeline.errors import ConfigChangedError, InputError, SetupError
from pipeline.formats.descriptors import Shard
from pipeline.planning.manifest import ManifestError, open_manifest
from pipeline.planning.plan import Plan, plan_shards
from pipeline.running.backends import Backend, LocalBackend, RayBackend
from pipeline.running.coordinator import (
    PreparedRun,
    RunSummary,
    execute,
    prepare_run,
    run_labelling,
)
from pipeline.running.executors import InProcessExecutor
from pipeline.running.ray_executor import RayExecutor
from pipeline.running.ray_session import connect
from pipeline.running.recipe import Resolution, SegmenterSpec

__all__ = [
    "Backend",
    "ConfigChangedError",
    "InProcessExecutor",
    "InputError",
    "LocalBackend",
    "ManifestError",
    "Plan",
    "PreparedRun",
    "RayBackend",
    "RayExecutor",
    "Resolution",
    "RunConfig",
    "RunSummary",
    "SegmenterSpec",
    "SetupError",
    "Shard",
    "connect",
    "execute",
    "load_run_config",
    "open_manifest",
    "plan_shards",
    "prepare_run",
    "run_labelling",
]
