"""`meta-opt` command line: parses the subcommand and hands over to the module that owns it.

Each subcommand lives in the module named in `COMMANDS`, which provides
`add_arguments(parser)` and `main(args) -> int`. Only the chosen command's module is
imported (to define its arguments and run it), so `meta-opt --help` and `--version` import
neither JAX nor any command, and one command's imports never slow another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

import meta_opt

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("meta_opt.experiments.run_command", "run an experiment sweep from a config file"),
    "plot": ("meta_opt.experiments.plot_command", "write PNG plots of runs and eval-lopt results"),
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


def _module_file(module: str) -> Path:
    """Where `module`'s source file sits, found without importing its package.

    `importlib.util.find_spec` would import the parent packages (`meta_opt.data` pulls in
    JAX), which is exactly what `--help` must not do.
    """
    root = Path(meta_opt.__file__).parent.parent
    return root.joinpath(*module.split(".")).with_suffix(".py")


def available_commands() -> dict[str, tuple[str, str]]:
    """The entries of `COMMANDS` whose module is installed (a command being built is hidden)."""
    return {name: entry for name, entry in COMMANDS.items() if _module_file(entry[0]).is_file()}


def _chosen_command(argv: Sequence[str]) -> str | None:
    """The subcommand named in `argv`: its first word that is not an option.

    The top-level parser's only options (`-h`, `--version`) take no value, so the first
    non-option word is the command (or a typo, which argparse then reports).
    """
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(
    command: str | None = None,
) -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The `meta-opt` parser and its subparsers; only `command`'s arguments are defined.

    Every available command is listed (with its one-line help), but only the module of
    `command` is imported to add its arguments; the others stay unimported.

    Args:
      command: the subcommand about to run, or None (top-level help, version).

    Returns:
      (the top-level parser, {command name: its subparser}).
    """
    parser = argparse.ArgumentParser(
        prog="meta-opt", description="meta_opt: meta-optimization in JAX."
    )
    parser.add_argument(
        "--version", action="version", version=f"meta-opt (meta_opt) {meta_opt.__version__}"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers = {}
    for name, (module, help_text) in available_commands().items():
        subparsers[name] = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(subparsers[name])
    return parser, subparsers


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `meta-opt` script; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else argv
    command = _chosen_command(argv)
    parser, subparsers = build_parser(command)
    args, unknown = parser.parse_known_args(argv)
    if args.command is None:
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        parser.print_help()
        return 2
    if unknown:
        # argparse would report these with the top-level usage; the user needs the
        # subcommand's (exits with status 2).
        subparsers[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    module = COMMANDS[args.command][0]
    return int(importlib.import_module(module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
