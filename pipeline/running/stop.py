"""Stopping a run cleanly: a signal asks, the dispatch loop winds down.

The first SIGTERM (``ray job stop``, a scheduler, ``kill``) or SIGINT (Ctrl-C) sets a
:class:`StopRequest`: the dispatch loop takes no new shard, lets the attempts in flight finish
within ``stop_timeout_s`` (or gives them back), and raises :class:`Stopped`; the run is then
recorded ``interrupted`` and the same command resumes it. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType


class Stopped(KeyboardInterrupt):
    """The driver was told to stop.

    Attributes:
        code: the exit code that says so (128 + the signal's number).
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signal.Signals(signum).name}")
        self.code = 128 + signum


class StopRequest:
    """Whether, since when and by which signal the run was asked to stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.since: float | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def request(self, signum: int) -> None:
        if self.signum is None:
            self.signum, self.since = signum, time.monotonic()

    def overdue(self, timeout_s: float) -> bool:
        """Asked more than ``timeout_s`` ago."""
        return self.since is not None and time.monotonic() - self.since > timeout_s

    def stopped(self) -> Stopped:
        assert self.signum is not None
        return Stopped(self.signum)


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGINT sets ``stop``; a second raises
    :class:`Stopped` at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.requested:
            raise Stopped(signum)
        stop.request(signum)

    before = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
