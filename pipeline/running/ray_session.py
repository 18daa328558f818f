"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or an embedded one.

Ray is started only when there is work: validation and planning run before it, so bad input
fails in a second, not after Ray's start-up.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def connect(address: str | None) -> bool:
    """Join a cluster or start an embedded Ray; return whether this call started it.

    ``address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets for its drivers) joins that
    cluster; ``auto`` joins the one ``ray start`` left on this machine. Without either, a new
    embedded instance starts: never a stale local cluster found by chance.
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        log.info("Ray: joined the cluster at %s", address)
    else:
        ray.init(address="local", include_dashboard=False)
        log.info("Ray: started an embedded local instance")
    return True
