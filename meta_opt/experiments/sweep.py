"""Sweeps: a Python config file's `get_config()` list of (ExperimentConfig, OptimizerConfig).

`get_config()` may also return a `Study` (`study.py`): tuned families with grids and
seeds, expanded here into ordinary pairs plus each pair's study metadata (`read_sweep`).

`load_sweep(path)` imports the file and checks what it returns; `apply_overrides(pairs,
["experiment.num_iters=50", "optimizer.learning_rate=0.3"])` changes a field of every pair
(values parse as JSON, else stay strings) and rejects unknown keys with the valid ones.
`pair_name(index, opt_cfg)` names the run directory of a pair.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.optimizers.config import ConfigError, OptimizerConfig
from meta_opt.optimizers.config import parse_override_value as parse_value

Pair = tuple[ExperimentConfig, OptimizerConfig]


@dataclasses.dataclass
class Sweep:
    """The pairs of a sweep, with each pair's study metadata (None outside a study).

    Attributes:
      pairs: the (ExperimentConfig, OptimizerConfig) pairs, in run-directory index order.
      metadata: per pair, what the study records about it (family, grid point, seed).
      study: the `Study` the pairs were expanded from, or None for a plain list.
    """

    pairs: list[Pair]
    metadata: list[dict[str, Any] | None]
    study: Any = None


def as_sweep(spec: Any, where: str = "get_config()") -> Sweep:
    """A `Sweep` from what `get_config()` returned: a list of pairs or a `Study`."""
    from meta_opt.experiments.study import Study

    if isinstance(spec, Study):
        pairs, metadata = spec.expand()
        return Sweep(pairs, metadata, spec)
    pairs = check_pairs(spec, where)
    return Sweep(pairs, [None] * len(pairs))


def read_sweep(path: str | Path) -> Sweep:
    """Imports the config file at `path` and returns its sweep (checked)."""
    return as_sweep(_get_config(path), where=str(path))


def load_sweep(path: str | Path) -> list[Pair]:
    """Imports the config file at `path` and returns its `get_config()` pairs (checked)."""
    return read_sweep(path).pairs


def _get_config(path: str | Path) -> Any:
    """What the config file's `get_config()` returns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist; pass a path to a .py file "
                          f"defining get_config() (examples in configs/)")
    module_name = f"_meta_opt_sweep_{re.sub(r'[^0-9a-zA-Z_]', '_', path.stem)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot import config file '{path}' (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # so dataclasses/pickle inside the file resolve names
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if not callable(get_config):
        raise ConfigError(f"config file '{path}' must define get_config() returning a list of "
                          f"(ExperimentConfig, OptimizerConfig) pairs or a Study")
    return get_config()


def check_pairs(pairs: Any, where: str = "get_config()") -> list[Pair]:
    """Returns `pairs` as a list, or raises a ConfigError saying which entry is malformed.

    A `Study` is expanded into its pairs."""
    from meta_opt.experiments.study import Study

    if isinstance(pairs, Study):
        return pairs.expand()[0]
    if isinstance(pairs, tuple) and len(pairs) == 2 and isinstance(pairs[0], ExperimentConfig):
        pairs = [pairs]
    if not isinstance(pairs, (list, tuple)) or not pairs:
        raise ConfigError(f"{where} must return a non-empty list of (ExperimentConfig, "
                          f"OptimizerConfig) pairs, got {type(pairs).__name__}")
    out = []
    for i, pair in enumerate(pairs):
        ok = (isinstance(pair, (list, tuple)) and len(pair) == 2
              and isinstance(pair[0], ExperimentConfig)
              and isinstance(pair[1], OptimizerConfig))
        if not ok:
            raise ConfigError(f"{where}: entry {i} must be an (ExperimentConfig, "
                              f"OptimizerConfig) pair, got {pair!r}")
        out.append((pair[0], pair[1]))
    return out


def parse_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Splits ['experiment.seed=3', 'optimizer.H=2'] into ({'seed': 3}, {'H': 2})."""
    experiment: dict[str, Any] = {}
    optimizer: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, field = key.strip().partition(".")
        if not sep or not dot or not field or section not in ("experiment", "optimizer"):
            raise ConfigError(f"--set expects experiment.FIELD=VALUE or optimizer.FIELD=VALUE, "
                              f"got {item!r}")
        (experiment if section == "experiment" else optimizer)[field] = parse_value(value)
    return experiment, optimizer


def apply_overrides(pairs: list[Pair], items: list[str]) -> list[Pair]:
    """Applies `--set` overrides to every pair; each config is re-validated.

    Optimizer overrides go through `from_dict`, so values are coerced to the field types
    (e.g. a JSON object for a schedule) and unknown keys fail listing the valid ones.
    """
    experiment, optimizer = parse_overrides(items)
    out = []
    for exp_cfg, opt_cfg in pairs:
        if experiment:
            exp_cfg = ExperimentConfig.from_dict({**exp_cfg.to_dict(), **experiment})
        if optimizer:
            opt_cfg = OptimizerConfig.from_dict({**opt_cfg.to_dict(), **optimizer})
        out.append((exp_cfg, opt_cfg))
    return out


def pair_name(index: int, opt_cfg: OptimizerConfig) -> str:
    """Run-directory name of a pair: '<index>_<optimizer_name>'."""
    return f"{index}_{opt_cfg.registered_name()}"


def pair_to_dict(exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig) -> dict[str, Any]:
    """The JSON form of a pair (what `config.json` holds)."""
    return {"experiment": exp_cfg.to_dict(), "optimizer": opt_cfg.to_dict()}


def pair_from_dict(d: dict[str, Any]) -> Pair:
    return ExperimentConfig.from_dict(d["experiment"]), OptimizerConfig.from_dict(d["optimizer"])


def non_default_fields(opt_cfg: OptimizerConfig) -> str:
    """'k=v, ...' for the fields that differ from their defaults (what tells pairs apart)."""
    parts = []
    for f in dataclasses.fields(opt_cfg):
        value = getattr(opt_cfg, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = None
        if value != default:
            if isinstance(value, OptimizerConfig):
                value = value.registered_name()
            parts.append(f"{f.name}={value}")
    return ", ".join(parts)


def describe(opt_cfg: OptimizerConfig) -> str:
    """Short human description of an optimizer config: name and non-default fields."""
    return f"{opt_cfg.registered_name()}({non_default_fields(opt_cfg)})"
