"""`meta-opt` command line: parses the subcommand and hands over to the module that owns it.

Each subcommand lives in the module named in `COMMANDS`, which provides
`add_arguments(parser)` and `main(args) -> int`. Modules are imported only when their
command runs, so `meta-opt --help` stays fast and one command's imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("meta_opt.experiments.run_command", "run an experiment sweep from a config file"),
    "plot": ("meta_opt.experiments.plot_command", "write PNG plots for run directories"),
    "report": ("meta_opt.experiments.report_command", "a study's table and plots (tuned families)"),
    "bench": ("meta_opt.experiments.bench_command", "benchmarks (e.g. `bench synthetic`)"),
    "data": ("meta_opt.data.data_command", "dataset status and downloads"),
    "meta-train": (
        "meta_opt.experiments.meta_train_command",
        "meta-train a learned optimizer from a config file",
    ),
    "eval-lopt": (
        "meta_opt.experiments.eval_lopt_command",
        "compare a learned optimizer checkpoint with Adam on a task",
    ),
}


def _available() -> dict[str, tuple[str, str]]:
    """Commands whose module is installed (a command still being built is hidden)."""
    out = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            out[name] = (module, help_text)
    return out


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str]]:
    parser = argparse.ArgumentParser(
        prog="meta-opt", description="meta_opt: meta-optimization in JAX."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module, help_text) in _available().items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(module).add_arguments(sp)
        modules[name] = module
    return parser, modules


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser, modules = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(modules[args.command]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
