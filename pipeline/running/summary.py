"""How a labelling job ends, for its user: the closing lines, and the exit code and message
of a run that raised."""

from __future__ import annotations

import traceback

from pipeline.errors import DiskFullError, InputError, SetupError
from pipeline.running.coordinator import RunSummary
from pipeline.running.lease import LeaseLostError
from pipeline.running.stop import Stopped


def ending(err: BaseException, output: str) -> tuple[int, str]:
    """The exit code and the message of a run that raised ``err``."""
    if isinstance(err, InputError):
        return 2, f"error: {err}"
    if isinstance(err, SetupError):
        return 1, (
            f"error: the model could not be built: {err.cause}\n"
            f"(traceback: python -m jobs.status {output} --tracebacks)"
        )
    if isinstance(err, KeyboardInterrupt):
        code = err.code if isinstance(err, Stopped) else 130
        return code, f"stopped: the run is resumable with the same command ({output})"
    if isinstance(err, DiskFullError):
        return 1, (
            f"error: the output ran out of space ({err}); free space and run the same command "
            "to resume: finished shards are kept"
        )
    if isinstance(err, LeaseLostError):
        return 1, f"error: {err}"
    trace = "".join(traceback.format_exception(err))
    return 1, f"{trace}error: the run crashed; see python -m jobs.status {output}"


def describe_summary(summary: RunSummary, output: str) -> str:
    """The job's closing lines: counts, where the masks are, failures and retries."""
    if summary.complete_before:
        return (
            f"run complete: {summary.images_labelled} images labelled, {summary.images_failed} "
            f"failed, in {summary.shards} shards; nothing left to do (no model was started). "
            f"Masks: {output}/annotations/*.parquet"
        )
    masks = "annotations.json and " if summary.merged else ""
    lines = [
        f"{summary.images_labelled} images labelled, {summary.images_failed} failed, "
        f"{summary.shards_failed} of {summary.shards} shards failed, {summary.seconds:.1f} s. "
        f"Masks: {output}/{masks}annotations/*.parquet"
    ]
    if summary.failures_by_error:
        kinds = ", ".join(f"{n} {error}" for error, n in summary.failures_by_error.items())
        where = "failures.jsonl" if summary.merged else "shards/*.json (or jobs.merge)"
        lines.append(f"failed images by cause: {kinds}; each listed in {output}/{where}")
    if summary.every_image_failed:
        lines.append(
            "error: every image failed, so nothing was labelled: see the causes above (a "
            "manifest's relative uris are read against the manifest's own folder)"
        )
    if summary.retries:
        kinds = ", ".join(f"{n} {cause}" for cause, n in sorted(summary.retries.items()))
        lines.append(f"attempts retried: {kinds} (died: worker lost; oom: out of memory; timeout)")
    if summary.shards_failed:
        lines.append(
            f"failed shards and their tracebacks: python -m jobs.status {output} --tracebacks"
        )
    return "\n".join(lines)
