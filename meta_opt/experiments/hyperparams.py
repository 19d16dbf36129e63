"""Numeric hyperparameters as values: an optimizer config split into its structure and numbers.

A grid of pairs that differ only in learning rate, momentum, weight decay, ... compiles once
when those numbers enter the compiled step as arguments instead of constants. This module
finds a config's numeric leaves (`numeric_leaves`), replaces some of them by a placeholder
to get the config's *structure* (`structure_of`: equal for every member of a grid, so it is
the grouping key), and rebuilds a config from a structure and values (`with_values`), where
the values may be JAX tracers inside a jitted function.

optax's `inject_hyperparams` does the same for one optax alias, storing the numbers in the
optimizer state; it cannot be applied to our configs, whose `make_jax` chains several
transformations (and whose state must stay what checkpoints hold), hence this small split.

Which leaves are values: finite, non-zero floats, at any depth (fields, entries of float
tuples such as `scale_by_adam_betas`, nested configs such as a schedule or Mechanic's base
optimizer). Zeros stay constants because zero usually selects a structure (momentum 0: no
momentum buffer; base learning rate 0: MetaOpt's cheap rollouts). Integers, strings and
booleans are structure. A builder that branches on a number in Python cannot take it as a
value; `trace_safe_paths` finds such leaves by trying, and they stay constants.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax

from meta_opt.optimizers.config import Config

Path = str  # "learning_rate", "scale_by_adam_betas.1", "base_optimizer.learning_rate"


class _Value:
    """Placeholder for a numeric leaf in a config's structure (compares equal to itself)."""

    def __repr__(self) -> str:
        return "<value>"


VALUE = _Value()

# Errors a builder raises when it needs a Python number where a tracer was given.
_TRACER_ERRORS = (
    jax.errors.ConcretizationTypeError,
    jax.errors.TracerArrayConversionError,
    jax.errors.TracerIntegerConversionError,
    jax.errors.TracerBoolConversionError,
)


def numeric_leaves(cfg: Config) -> dict[Path, float]:
    """The config's finite, non-zero float leaves by path (see the module docstring)."""
    out: dict[Path, float] = {}
    for f in dataclasses.fields(cfg):
        _collect(getattr(cfg, f.name), f.name, out)
    return out


def _collect(value: Any, path: str, out: dict[Path, float]) -> None:
    if isinstance(value, Config):
        for f in dataclasses.fields(value):
            _collect(getattr(value, f.name), f"{path}.{f.name}", out)
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            _collect(v, f"{path}.{i}", out)
    elif isinstance(value, float) and math.isfinite(value) and value != 0.0:
        out[path] = value


def with_values(cfg: Config, values: Mapping[Path, Any]) -> Config:
    """`cfg` with the leaf at each path replaced by its value (not validated).

    The concrete config was validated when it was built; the values here are its own
    numbers, traced, or the `VALUE` placeholder, which `validate` could not check.
    """
    nested: dict[str, dict[Path, Any]] = {}
    for path, value in values.items():
        head, _, rest = path.partition(".")
        nested.setdefault(head, {})[rest] = value
    new = copy.copy(cfg)  # a frozen dataclass: copied without __init__ (no validation)
    for name, sub in nested.items():
        object.__setattr__(new, name, _replace(getattr(cfg, name), sub, name))
    return new


def _replace(value: Any, sub: dict[Path, Any], where: str) -> Any:
    if "" in sub:  # the leaf itself
        return sub[""]
    if isinstance(value, Config):
        return with_values(value, sub)
    if isinstance(value, tuple):
        items = list(value)
        for rest_path, v in _split_first(sub).items():
            index = int(rest_path)
            items[index] = _replace(items[index], v, f"{where}.{index}")
        return tuple(items)
    raise KeyError(f"no numeric leaf at '{where}' in a value of type {type(value).__name__}")


def _split_first(sub: dict[Path, Any]) -> dict[str, dict[Path, Any]]:
    out: dict[str, dict[Path, Any]] = {}
    for path, value in sub.items():
        head, _, rest = path.partition(".")
        out.setdefault(head, {})[rest] = value
    return out


def structure_of(cfg: Config, paths: Iterable[Path]) -> Config:
    """`cfg` with the leaves at `paths` replaced by the `VALUE` placeholder."""
    return with_values(cfg, {p: VALUE for p in paths})


def structure_key(cfg: Config) -> str:
    """A JSON string equal for configs of equal structure (a dict key for grouping)."""
    return json.dumps(_plain(cfg), sort_keys=True, default=repr)


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        out = {value._name_key: value.registered_name()} if value._name_key else {}
        out.update({f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)})
        return out
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def trace_safe_paths(paths: Iterable[Path], trial: Callable[[frozenset[Path]], None]
                     ) -> frozenset[Path]:
    """The paths whose leaves can be traced: `trial(traced)` raises if one cannot.

    `trial` traces the optimizer (e.g. `jax.eval_shape` of init and update) with the leaves
    at `traced` as tracers and the others as constants. All paths are tried together
    first (the common case, one trial); when that fails, each alone.
    """
    paths = frozenset(paths)
    if not paths:
        return paths
    try:
        trial(paths)
        return paths
    except _TRACER_ERRORS:
        pass
    safe = set()
    for p in sorted(paths):
        try:
            trial(frozenset([p]))
            safe.add(p)
        except _TRACER_ERRORS:
            continue
    try:  # leaves traceable one by one may still fail together: then all stay constants
        trial(frozenset(safe))
    except _TRACER_ERRORS:
        return frozenset()
    return frozenset(safe)
