"""`meta-opt plot RUN_DIR ... [--out DIR]`: PNG plots of finished or running runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="pair directories (with config.json) or experiment folders")
    parser.add_argument("--out", default=None,
                        help="folder for the PNGs (default: <first RUN_DIR>/plots)")


def main(args) -> int:
    from meta_opt.experiments.plots import plot_runs

    out = Path(args.out) if args.out else Path(args.run_dirs[0]) / "plots"
    try:
        written = plot_runs(args.run_dirs, out)
    except FileNotFoundError as e:
        print(f"plot: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
