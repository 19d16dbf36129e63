"""The `meta-opt` shell: fast help, a version, and each subcommand's own usage on errors.

`meta-opt --help` must not import JAX (importing it is what made help take seconds): a
child interpreter runs the help and reports which heavy modules it loaded. No timing.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import meta_opt
from meta_opt import cli

HEAVY = ("jax", "optax", "flax", "orbax", "matplotlib")

_CHILD = """
import json, sys
from meta_opt import cli
argv = json.loads(sys.argv[1])
try:
    cli.main(argv)
except SystemExit:
    pass
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.argv[2])))
commands = sorted(m for m in sys.modules if m.endswith("_command"))
print(json.dumps({"heavy": loaded, "commands": commands}), file=sys.stderr)
"""


def run_child(argv: list[str]) -> tuple[str, dict]:
    """Runs `meta-opt ARGV` in a fresh interpreter: (stdout, what it imported)."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return out.stdout, json.loads(out.stderr.strip().splitlines()[-1])


def test_top_level_help_lists_every_command_and_imports_no_jax():
    stdout, imported = run_child(["--help"])
    assert imported == {"heavy": [], "commands": []}
    for name in cli.COMMANDS:
        assert name in stdout


def test_building_the_parser_imports_no_jax():
    _, imported = run_child(["--version"])
    assert imported["heavy"] == [] and imported["commands"] == []


def test_a_subcommand_help_imports_only_that_command():
    stdout, imported = run_child(["plot", "--help"])
    assert imported["commands"] == ["meta_opt.experiments.plot_command"]
    assert "usage: meta-opt plot" in stdout and "PATH [PATH ...]" in stdout


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert meta_opt.__version__ in capsys.readouterr().out
    # The package and its metadata (pyproject.toml) agree.
    assert meta_opt.__version__ == importlib.metadata.version("meta_opt")


def test_unknown_option_of_a_subcommand_prints_that_subcommands_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "--bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: meta-opt run ")
    assert "--set KEY=VALUE" in err  # the run command's own options
    assert "meta-opt run: error: unrecognized arguments: --bogus" in err


def test_unknown_command_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bogus"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'bogus'" in err and "'meta-train'" in err


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_every_listed_command_module_exists():
    assert set(cli.available_commands()) == set(cli.COMMANDS)
