"""A moto S3 server on a free loopback port, for benchmarks that need an object store."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from pathlib import Path

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class MotoServer:
    """A moto S3 server for the length of a ``with`` block; ``endpoint`` is its URL.

    Args:
        log: where werkzeug's request log goes (a line per request), for :meth:`requests`;
            ``None`` discards it.
    """

    def __init__(self, log: Path | None = None) -> None:
        self.log = log

    def __enter__(self) -> MotoServer:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"]
        if self.log is None:
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        else:
            with open(self.log, "wb") as sink:
                self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=sink)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.1)
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    def requests(self) -> int:
        """GET and HEAD requests logged so far (needs a ``log``)."""
        assert self.log is not None, "MotoServer(log=...) counts requests"
        text = _ANSI.sub("", self.log.read_text(errors="replace"))  # werkzeug colours 206s
        return sum(('"GET ' in line or '"HEAD ' in line) for line in text.splitlines())

    def __exit__(self, *exc: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
