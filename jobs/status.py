"""Show a run's progress from its ledger and markers, without Ray: ``python -m jobs.status OUTPUT``.

Exit code: 0 when no shard failed, 1 if one did (or the run failed), 2 if OUTPUT is no run.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import InputError
from pipeline.formats.storage import Storage
from pipeline.reading.status import describe_status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.status", description=__doc__)
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument("--tracebacks", action="store_true", help="print failed shards' tracebacks")
    args = parser.parse_args(argv)
    try:
        text, ok = describe_status(Storage(args.output, create=False), args.tracebacks)
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
