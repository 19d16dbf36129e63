"""`meta-opt report RUN_DIR [--out DIR]`: the table and plots of a study (see `report.py`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `meta-opt report`."""
    parser.add_argument("run_dir", metavar="RUN_DIR",
                        help="a study's folder: OUT/<experiment_name> of a config whose "
                             "get_config() returns a Study")
    parser.add_argument("--out", default=None,
                        help="folder for report.md and the PNGs (default: RUN_DIR/report)")


def main(args) -> int:
    """Runs `meta-opt report`; returns the exit code."""
    from meta_opt.experiments.report import write_report

    try:
        report = write_report(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(report["markdown"])
    for path in report["files"]:
        print(path)
    return 0
