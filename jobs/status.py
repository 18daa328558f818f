"""Show a run's progress from its ledger, without Ray: ``python -m jobs.status OUTPUT``."""

from __future__ import annotations

import argparse
import collections
import sys

from pipeline.formats.outputs import finished_shards, read_run
from pipeline.formats.storage import Storage
from pipeline.running.ledger import DONE, Ledger


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.status", description=__doc__)
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument("--tracebacks", action="store_true", help="print failed shards' tracebacks")
    args = parser.parse_args(argv)
    storage = Storage(args.output, create=False)
    run = read_run(storage)
    if run is None:
        print(f"error: {args.output} holds no run.json: not a gclip-label output", file=sys.stderr)
        return 2
    entries = Ledger(storage).read()
    # A shard's marker is written before its ledger entry: count it done from the marker on.
    done = set(finished_shards(storage)) | {i for i, e in entries.items() if e.state == DONE}
    states = collections.Counter("done" if i in done else e.state for i, e in entries.items())
    method = run.get("resolved", run["config"])["method"]
    blocks = f" (global blocks {method['global_blocks']})" if method["name"] == "gclip" else ""
    print(f"run {run['state']}: model {run['config']['model']}, method {method['name']}{blocks}")
    if run.get("error"):
        print(f"  error: {run['error']}")
        if args.tracebacks and run.get("traceback"):
            print(run["traceback"])
    print(
        f"shards: {states['done']} done, {states['failed']} failed, {states['pending']} pending"
        f" of {len(entries)} planned"
    )
    print(
        f"images: {sum(e.images_done for e in entries.values() if e.state == DONE)} labelled, "
        f"{sum(e.images_failed for e in entries.values() if e.state == DONE)} failed"
        + (" (the ledger's last few seconds aside)" if run["state"] == "running" else "")
    )
    retries = sum((collections.Counter(e.retries) for e in entries.values()), collections.Counter())
    if retries:
        print("attempts retried: " + ", ".join(f"{n} {k}" for k, n in sorted(retries.items())))
    for entry in sorted(entries.values(), key=lambda e: e.shard):
        if entry.state == "failed" and entry.shard not in done:
            print(f"  shard {entry.shard}: failed after {entry.attempts} attempt(s): {entry.error}")
            if args.tracebacks and entry.traceback:
                print(entry.traceback)
    return 1 if states["failed"] or run["state"] == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
