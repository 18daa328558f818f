"""Export a run for training or review: ``python -m jobs.export OUTPUT --format F --to DEST``.

Formats: ``webdataset`` (tars of KEY.<ext>, KEY.label.png, KEY.json), ``mmseg``
(img_dir/ann_dir train/val and dataset.py), ``hf`` (a datasets dataset saved to disk),
``labelstudio`` (tasks with brushlabels predictions and the labelling config). DEST is local
or s3://; an interrupted export resumes where its last finished part ended.
"""

from __future__ import annotations

import argparse
import sys

from pipeline.errors import InputError
from pipeline.exports import FORMATS, ExportOptions, Filter, export_run

DEFAULTS = ExportOptions()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jobs.export", description=__doc__.splitlines()[0]
    )
    parser.add_argument("output", help="a run's output folder (local or s3://)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--to", required=True, help="the export's folder (local or s3://)")
    parser.add_argument(
        "--min-confidence",
        type=float,
        help="keep images whose pixel-weighted mean confidence is at least this",
    )
    parser.add_argument(
        "--classes", nargs="+", default=(), help="keep images in which one of these classes appears"
    )
    parser.add_argument(
        "--shard-mb",
        type=float,
        default=DEFAULTS.shard_mb,
        help="MB per part: a tar, an Arrow file, a tasks file (%(default)s)",
    )
    parser.add_argument("--val-fraction", type=float, default=DEFAULTS.val_fraction, help="mmseg")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="mmseg: the split's seed")
    parser.add_argument(
        "--image-url-prefix", help="labelstudio: the URL that image ids are joined to"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    chosen = Filter(args.min_confidence, tuple(args.classes))
    options = ExportOptions(args.shard_mb, args.val_fraction, args.seed, args.image_url_prefix)
    try:
        summary = export_run(
            args.output, args.format, args.to, chosen, options, not args.no_progress
        )
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ImportError as err:  # hf without datasets
        print(f"error: {err}; install it: pip install -e '.[export]'", file=sys.stderr)
        return 2
    resumed = f" ({summary.resumed} finished before)" if summary.resumed else ""
    print(
        f"{summary.samples} images in {summary.parts} parts{resumed} -> {summary.dest}; "
        f"{summary.failures} could not be read"
        + (f" (listed in {summary.dest}/_parts/)" if summary.failures else "")
    )
    return 1 if summary.failures and not summary.samples else 0


if __name__ == "__main__":
    sys.exit(main())
