"""Running a config file: a Python file whose `get_config()` returns what a command runs.

`meta-opt run` and `meta-opt meta-train` both read their configs this way. Whatever goes
wrong in the user's file (it is missing, does not parse, raises, lacks `get_config`, or
builds a config with a bad value) becomes a `CommandError` whose message names the file
(and the line, for a syntax error) and says what to fix; `--debug` shows the traceback.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from meta_opt.experiments.command_errors import CommandError, short
from meta_opt.optimizers.config import ConfigError


def call_get_config(path: str | Path, returns: str, example: str) -> Any:
    """Imports the config file at `path` and returns what its `get_config()` returns.

    The file is imported as a module registered in `sys.modules`, so dataclasses and
    pickling inside it resolve their names.

    Args:
      path: the config file.
      returns: what `get_config()` should return, for messages ("a MetaTrainConfig").
      example: a config file to point to in messages.

    Raises:
      CommandError: the file is missing, does not run, or builds a bad config.
    """
    path = Path(path)
    if not path.is_file():
        raise CommandError(
            f"config file {path} does not exist; pass a Python file whose get_config() "
            f"returns {returns} (e.g. {example})"
        )
    module_name = f"_meta_opt_config_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"cannot import config file {path}; it must be a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
        get_config = getattr(module, "get_config", None)
        if not callable(get_config):
            raise CommandError(f"{path} must define get_config() returning {returns}")
        return get_config()
    except CommandError:
        raise
    except ConfigError as err:
        raise CommandError(f"{path}: {err}") from err
    except SyntaxError as err:
        raise CommandError(
            f"{err.filename or path}, line {err.lineno}: syntax error ({err.msg}); fix the "
            "config file"
        ) from err
    except Exception as err:  # the config file's own code failed: a user error too
        raise CommandError(
            f"{path}: running it raised {type(err).__name__}: {short(err, 1)}; fix the "
            "config file (--debug shows the traceback)"
        ) from err
