"""How a run can fail, by who must act: the user's input, the run's setup, or a shard.

The job's exit code follows the class: :class:`InputError` is bad input found before any work
(exit 2); :class:`SetupError` means the model or a worker could not be built, so the run ended
before or while starting its workers (exit 1, no retries: retrying would fail the same way);
anything else escaping a run is a crash (exit 1 with its traceback).
"""

from __future__ import annotations

import errno
import re

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class InputError(ValueError):
    """The input cannot work (config, manifest, vocabulary, weights source, output folder)."""


class ConfigChangedError(InputError):
    """The output folder holds a run made with other labelling settings or an older format."""


class DamagedFileError(InputError):
    """A file of the run's own (ledger, marker, ``run.json``) cannot be read as written.

    Attributes:
        location: the file, as the user would find it (``OUTPUT/ledger/...``).
        problem: what is wrong with it, in a few words.
        fix: what the user can do about it.
    """

    def __init__(self, location: str, problem: str, fix: str) -> None:
        super().__init__(f"{location} is damaged ({problem}). {fix}")
        self.location, self.problem, self.fix = location, problem, fix

    def __reduce__(self) -> tuple[type[DamagedFileError], tuple[str, str, str]]:
        return DamagedFileError, (self.location, self.problem, self.fix)


class SetupError(RuntimeError):
    """The segmenter could not be built (unreadable weights, options the model rejects).

    Attributes:
        cause: ``"ExceptionClass: message"`` of the underlying error, free of colour codes.
        traceback: its traceback as text, when known.
    """

    def __init__(self, cause: str, traceback: str | None = None) -> None:
        super().__init__(cause)
        self.cause = cause
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[SetupError], tuple[str, str | None]]:
        return SetupError, (self.cause, self.traceback)


def plain(text: str) -> str:
    """``text`` without terminal colour codes (Ray colours its tracebacks)."""
    return _ANSI.sub("", text)


def describe(err: BaseException) -> str:
    """``"ExceptionClass: message"``, the form errors take in the ledger and on stderr."""
    return plain(f"{type(err).__name__}: {err}")


def is_out_of_memory(err: BaseException) -> bool:
    """Host ``MemoryError``, CUDA's ``OutOfMemoryError`` or a memory-monitor kill by Ray.

    Matched by name and message so this module needs neither torch nor Ray.
    """
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return True
    text = str(err).lower()
    return "out of memory" in text or "running low on memory" in text


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """A write ran out of space or quota (``ENOSPC``, ``EDQUOT``): a resource, not a bug.

    Matched by errno and by message, since Ray and pyarrow re-raise such errors as text.
    """
    if isinstance(err, OSError) and err.errno in _NO_SPACE:
        return True
    text = str(err).lower()
    return "no space left on device" in text or "disk quota exceeded" in text


class DiskFullError(OSError):
    """The output ran out of space (or quota): the run ends, its shards in flight stay
    pending, and the same command resumes once there is room."""
