"""`meta-opt bench synthetic`: the optimizer x test-function benchmark from the command line.

    meta-opt bench synthetic [--optimizers NAME,...] [--functions NAME,...] [--dim D]
                             [--steps N] [--seeds S] [--seed K] [--out DIR]

Prints the median final gap f - f* per function (rows) and optimizer (columns). With
`--out`, also writes `synthetic_bench.csv` (function, optimizer, seed, final_gap) and
`synthetic_bench.png` (median gap curve of every optimizer, one panel per function).
The numerics live in `meta_opt.experiments.synthetic_bench`; this module parses and writes.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from meta_opt.experiments import synthetic_bench as sb
from meta_opt.optimizers import ConfigError

CSV_NAME = "synthetic_bench.csv"
PNG_NAME = "synthetic_bench.png"


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmarks of `meta-opt bench` and their flags."""
    sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    p = sub.add_parser(
        "synthetic",
        help="every optimizer on every classic test function",
        description="Runs every chosen optimizer (default hyperparameters) on every classic "
        "test function from random points in its box, projected onto the box after each "
        "step, and prints the median final gap f - f* over seeds.",
    )
    p.add_argument(
        "--optimizers",
        type=_names,
        default=None,
        metavar="NAME,...",
        help="registered optimizer names (default: all, MetaOpt included)",
    )
    p.add_argument(
        "--functions",
        type=_names,
        default=None,
        metavar="NAME,...",
        help="test functions (default: all thirteen)",
    )
    p.add_argument(
        "--dim",
        type=_positive_int,
        default=sb.DEFAULT_DIM,
        help=f"dimension (2-D-only functions use 2; default {sb.DEFAULT_DIM})",
    )
    p.add_argument(
        "--steps",
        type=_positive_int,
        default=sb.DEFAULT_STEPS,
        help=f"steps per run (default {sb.DEFAULT_STEPS})",
    )
    p.add_argument(
        "--seeds",
        type=_positive_int,
        default=sb.DEFAULT_SEEDS,
        help=f"random initial points per function (default {sb.DEFAULT_SEEDS})",
    )
    p.add_argument("--seed", type=int, default=0, help="base PRNG seed (default 0)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="write CSV and PNG")


def write_csv(result: sb.BenchResult, path: Path) -> None:
    """Writes a benchmark result as CSV, one row per (function, optimizer)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["function", "optimizer", "seed", "final_gap"])
        for function, optimizer, seed, gap in sb.csv_rows(result):
            writer.writerow([function, optimizer, seed, repr(gap)])


def write_png(result: sb.BenchResult, path: Path) -> None:
    """A grid of panels, one per function: median-over-seeds gap vs step, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    n = len(result.functions)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for i, fn in enumerate(result.functions):
        ax = axes[i // cols][i % cols]
        for j, name in enumerate(result.optimizers):
            curve = np.median(result.curves[name][i], axis=0)
            # Gaps are >= 0 up to rounding; floor them so a solved run stays on the plot.
            ax.semilogy(np.maximum(curve, 1e-12), color=cmap(j % 20), lw=1.2)
        ax.set_title(fn.label, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("f - f*", fontsize=8)
        ax.tick_params(labelsize=7)
    for k in range(n, rows * cols):
        axes[k // cols][k % cols].axis("off")
    # Explicit proxies: matplotlib drops auto-collected labels that start with "_".
    handles = [Line2D([], [], color=cmap(j % 20)) for j in range(len(result.optimizers))]
    labels = list(result.optimizers)
    fig.legend(handles, labels, loc="lower center", ncol=max(1, min(len(labels), 7)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    """Runs `meta-opt bench`; returns the exit code."""
    if getattr(args, "bench", None) is None:
        print("meta-opt bench: choose a benchmark: synthetic", file=sys.stderr)
        return 2
    try:
        # Validate every name before compiling anything.
        sb.resolve_optimizers(args.optimizers)
        sb.resolve_functions(args.dim, args.functions)
        result = sb.run_synthetic_bench(
            optimizers=args.optimizers,
            functions=args.functions,
            dim=args.dim,
            steps=args.steps,
            seeds=args.seeds,
            seed=args.seed,
            progress=lambda line: print(f"  {line}", file=sys.stderr, flush=True),
        )
    except (ConfigError, ValueError) as e:
        print(f"meta-opt bench synthetic: error: {e}", file=sys.stderr)
        return 2
    print(
        f"median final gap f - f* over {args.seeds} seeds, {args.steps} steps "
        "(default hyperparameters, projected onto each function's box)"
    )
    print(sb.format_table(result))
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        write_csv(result, args.out / CSV_NAME)
        write_png(result, args.out / PNG_NAME)
        print(f"wrote {args.out / CSV_NAME} and {args.out / PNG_NAME}")
    return 0
