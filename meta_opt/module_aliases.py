"""Registers meta_opt modules under learned_optimization's module paths.

Code written for learned_optimization ports by replacing the package name alone
(`learned_optimization.outer_trainers.truncation_schedule` ->
`meta_opt.outer_trainers.truncation_schedule`); docs/learned_optimizers.md has the table.
An alias is the meta_opt module itself, not a copy, so classes and state are shared.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import ModuleType


def alias_submodules(package: str, modules: Mapping[str, ModuleType]) -> None:
    """Makes `import <package>.<name>` (and `from <package> import <name>`) give
    `modules[name]`; call it from `<package>/__init__.py`, which also binds the names."""
    for name, module in modules.items():
        sys.modules[f"{package}.{name}"] = module
