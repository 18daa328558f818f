"""Write overlay previews (image, coloured mask, legend) for a sample of a run's images.

python -m jobs.preview OUTPUT [--count 8] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys

from pipeline.reading.preview import write_previews


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.preview", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", help="a finished run's output folder")
    parser.add_argument("--count", type=int, default=8, help="how many images to render")
    parser.add_argument("--seed", type=int, default=0, help="which sample (deterministic)")
    args = parser.parse_args(argv)
    try:
        paths = write_previews(args.output, args.count, args.seed)
    except (OSError, ValueError, KeyError) as err:
        print(f"error: cannot render previews of {args.output}: {err}", file=sys.stderr)
        return 2
    print(f"{len(paths)} previews written, e.g. {paths[0] if paths else '-'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
