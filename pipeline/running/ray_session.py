"""Connecting to Ray: an existing cluster (``--address`` / ``RAY_ADDRESS``) or an embedded one.

Ray is started only when there is work: validation and planning run before it, so bad input
fails in a second, not after Ray's start-up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

# Ray announces that it enabled token authentication on every new local instance: right
# for a cluster, alarming for a job's own embedded instance, which nothing else reaches.
_TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


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
    with _keep_sigterm_handler():
        _init(ray, address)
    return True


def _init(ray: Any, address: str | None) -> None:
    if address:
        log.info("Ray: joining the cluster at %s", address)
        ray.init(address=address)
        log.info("Ray: joined the cluster at %s", address)
    else:
        log.info("Ray: starting an embedded local instance")
        with _quiet_token_notice():
            ray.init(address="local", include_dashboard=False)
        log.info("Ray: started an embedded local instance")


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """Keep the driver's own SIGTERM handler: ``ray.init`` replaces it with one that exits
    with status 1, which would make a stopped run a failed one instead of an interrupted one."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM) if main else None
    try:
        yield
    finally:
        if main and callable(before):
            signal.signal(signal.SIGTERM, before)


class _TokenNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Token authentication is enabled" not in record.getMessage()


@contextlib.contextmanager
def _quiet_token_notice() -> Iterator[None]:
    """Silence Ray's token-authentication notice while an embedded instance starts."""
    notice = _TokenNotice()
    logger = logging.getLogger(_TOKEN_NOTICE_LOGGER)
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)
