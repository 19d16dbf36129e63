"""`meta-opt plot PATH ... [--out DIR]`: PNG plots of runs and of eval-lopt results.

A PATH is a `meta-opt run` pair directory, an experiment folder of them, or an
`eval_<task>.json` written by `meta-opt eval-lopt` (its training curves).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meta_opt.experiments.command_errors import os_error, report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Defines `meta-opt plot`'s arguments (imports nothing heavy)."""
    parser.add_argument("run_dirs", nargs="+", metavar="PATH",
                        help="pair directories (with config.json), experiment folders, or "
                             "eval_<task>.json files of `meta-opt eval-lopt`")
    parser.add_argument("--out", default=None,
                        help="folder for the PNGs (default: <first PATH>/plots, or the "
                             "json file's folder/plots)")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a user error instead of its message")


def main(args: argparse.Namespace) -> int:
    """Writes the plots and prints their paths; 2 when a PATH holds nothing to plot."""
    from meta_opt.experiments.plots import plot_eval_lopt, plot_runs

    paths = [Path(p) for p in args.run_dirs]
    eval_files = [p for p in paths if p.suffix == ".json"]
    run_paths = [p for p in paths if p.suffix != ".json"]
    first = paths[0].parent if paths[0].suffix == ".json" else paths[0]
    out = Path(args.out) if args.out else first / "plots"
    try:
        written = [plot_eval_lopt(p, out) for p in eval_files]
        if run_paths:
            written += plot_runs(run_paths, out)
    except (FileNotFoundError, ValueError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"meta-opt plot: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an unwritable --out (read-only, a file in the way, a full disk)
        if getattr(args, "debug", False):
            raise
        return report("plot", os_error(e, fix=f"choose a folder you can write with --out "
                                               f"(the plots go to {out})"))
    for path in written:
        print(path)
    return 0
