"""Label one seeded sample of a manifest under 2-8 variants of the settings, side by side.

    python -m jobs.compare --manifest M --vocabulary V --sample 32 --variant NAME=CONFIG.json \
        --variant ... [--seed 0] [--ground-truth GT] --output DIR [jobs.label flags]

Each variant is a ``--config`` file; what it leaves out comes from the labelling job's flags
given here. Writes DIR/sample.parquet, DIR/variants/NAME (jobs.label outputs), DIR/compare.html,
DIR/compare.json and, with ground truth, DIR/best.json (a config ``jobs.label --config`` runs
on the whole manifest). Rerunning resumes: finished variants are kept. Exit code: 0 when
compared; 2 for bad input; else the labelling job's code for a variant it did not finish.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from functools import partial

from jobs import label as label_job
from pipeline import Backend, InputError, RayBackend
from pipeline.cli import overrides, parse_args
from pipeline.comparing import (
    Comparison,
    KeptOpen,
    VariantFailed,
    compare,
    flag_settings,
    parse_variants,
)


def main(argv: list[str] | None = None, backend: Backend | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m jobs.compare",
        description=__doc__.splitlines()[0],
        epilog="Any other flag is the labelling job's (python -m jobs.label --help).",
        allow_abbrev=False,  # an abbreviation of ours must not swallow a jobs.label flag
    )
    p.add_argument("--manifest", required=True, help="the manifest the sample is drawn from")
    p.add_argument("--vocabulary", required=True, help="class list (a variant may set its own)")
    p.add_argument("--output", required=True, help="DIR: the comparison's folder")
    p.add_argument("--sample", type=int, required=True, help="images in the sample")
    p.add_argument("--seed", type=int, default=0, help="which sample (default 0)")
    p.add_argument("--variant", action="append", default=[], help="NAME=CONFIG.json, 2-8 times")
    p.add_argument("--ground-truth", help="COCO .json or PNG folder: scores and DIR/best.json")
    p.add_argument("--values", choices=("indices", "ids"), default="indices", help="PNG values")
    args, rest = p.parse_known_args(argv)
    flags = parse_args(rest)
    passed = ("--allow-config-change",) * flags.allow_config_change
    passed += ("--retry-failed",) * flags.retry_failed
    shared = backend or RayBackend(flags.address)  # one Ray for every variant
    try:
        if flags.config or flags.dry_run:
            raise InputError("--config and --dry-run are jobs.label's: give --variant NAME=FILE.")
        variants = tuple(parse_variants(args.variant))
        c = Comparison(args.manifest, args.vocabulary, args.output, args.sample, variants)
        c = replace(c, seed=args.seed, command_line=flag_settings(overrides(flags)))
        c = replace(c, ground_truth=args.ground_truth, values=args.values, label_flags=passed)
        record = compare(c, partial(label_job.main, backend=KeptOpen(shared)))
    except (InputError, VariantFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return err.code if isinstance(err, VariantFailed) else 2
    finally:
        shared.close()
    best = record["best"]
    print(f"compared {len(record['variants'])} variants: {args.output}/compare.html")
    print(f"best by mIoU: {best}, {args.output}/best.json" if best else "no ground truth given")
    return 0


if __name__ == "__main__":
    sys.exit(main())
