"""Sweeps: a Python config file's `get_config()` list of (ExperimentConfig, OptimizerConfig).

`get_config()` may also return a `Study` (`study.py`): tuned families with grids and
seeds, expanded here into ordinary pairs plus each pair's study metadata (`read_sweep`).

`load_sweep(path)` imports the file and checks what it returns; `apply_overrides(pairs,
["experiment.num_iters=50", "MetaOpt.H=3", "pair2.momentum=0.9"])` changes fields of the
pairs each `--set` targets (values parse as JSON, else stay strings) and rejects keys no
targeted pair has, with the valid ones.
`pair_name(index, opt_cfg)` names the run directory of a pair.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
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
    """What the config file's `get_config()` returns (errors: `CommandError`, naming it)."""
    from meta_opt.experiments.config_file import call_get_config

    return call_get_config(path, "a list of (ExperimentConfig, OptimizerConfig) pairs or a "
                           "Study", "configs/default.py")


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


OVERRIDE_SYNTAX = (
    "--set expects TARGET.FIELD=VALUE, where TARGET is experiment (experiment.FIELD=VALUE: "
    "every pair), optimizer (optimizer.FIELD=VALUE: every pair whose optimizer has FIELD), "
    "an optimizer name (e.g. MetaOpt.H=3: every pair using it) or pairN (pair0.H=3: the "
    "optimizer of pair N)"
)


@dataclasses.dataclass(frozen=True)
class Override:
    """One `--set TARGET.FIELD=VALUE`: which pairs it targets, the field and its value.

    `target` is "experiment" (every pair's ExperimentConfig), "optimizer" (every pair
    whose optimizer config has `field`), a registered optimizer name such as "MetaOpt"
    (every pair using that optimizer) or "pairN" (the optimizer of the pair at index N).
    """

    target: str
    field: str
    value: Any
    text: str  # the item as typed, for error messages

    def pair_index(self) -> int | None:
        """N for a "pairN" target, else None."""
        m = re.fullmatch(r"pair(\d+)", self.target)
        return int(m.group(1)) if m else None


def parse_overrides(items: list[str]) -> list[Override]:
    """Parses `--set` items ('experiment.seed=3', 'MetaOpt.H=2', 'pair0.H=2', ...).

    Values parse as JSON (numbers, true/false, null, lists, objects), else stay strings.
    Only the syntax is checked here; `apply_overrides` checks targets and fields.
    """
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        target, dot, field = key.strip().partition(".")
        if not sep or not dot or not target or not field:
            raise ConfigError(f"{OVERRIDE_SYNTAX}; got {item!r}")
        if not field.isidentifier():
            raise ConfigError(
                f"--set {item!r}: FIELD must be one field name, got {field!r}; to change a "
                f"nested config, set the whole field to a JSON object (e.g. "
                f'optimizer.base_optimizer={{"optimizer_name": "SGD", "learning_rate": 1.0}})'
            )
        out.append(Override(target, field, parse_value(value), item))
    return out


def _field_names(config: Any) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(config) if f.init)


def _check_targets(pairs: list[Pair], overrides: list[Override]) -> None:
    """Raises a ConfigError for an override that can reach no pair of the sweep."""
    names = sorted({opt_cfg.registered_name() for _, opt_cfg in pairs})
    for o in overrides:
        index = o.pair_index()
        if o.target == "experiment":
            continue
        if index is not None:
            if index >= len(pairs):
                raise ConfigError(
                    f"--set {o.text!r}: the sweep has {len(pairs)} pairs "
                    f"(pair0..pair{len(pairs) - 1}), so there is no pair{index}"
                )
            _check_field(o, pairs[index][1])
        elif o.target == "optimizer":
            if not any(o.field in _field_names(opt) for _, opt in pairs):
                per_optimizer = "; ".join(
                    f"{name} (valid keys: {', '.join(_field_names(opt))})"
                    for name, opt in {opt.registered_name(): opt for _, opt in pairs}.items()
                )
                raise ConfigError(
                    f"--set {o.text!r}: no optimizer of the sweep has key {o.field!r}; "
                    f"{per_optimizer}"
                )
        elif o.target not in names and o.target in OptimizerConfig.names():
            raise ConfigError(
                f"--set {o.text!r}: no pair of the sweep uses optimizer {o.target!r}; the "
                f"sweep's optimizers are {', '.join(names)}"
            )
        elif o.target not in names:
            hint = _did_you_mean(o.target, names + ["experiment", "optimizer"])
            raise ConfigError(
                f"--set {o.text!r}: unknown target {o.target!r}{hint}; the sweep's optimizers "
                f"are {', '.join(names)}. {OVERRIDE_SYNTAX}"
            )
        else:
            _check_field(o, next(opt for _, opt in pairs if opt.registered_name() == o.target))


def _check_field(o: Override, opt_cfg: OptimizerConfig) -> None:
    """Raises a ConfigError when the optimizer `o` targets has no field `o.field`."""
    valid = _field_names(opt_cfg)
    if o.field not in valid:
        raise ConfigError(
            f"--set {o.text!r}: optimizer {opt_cfg.registered_name()!r} has no key "
            f"{o.field!r}{_did_you_mean(o.field, valid)}; valid keys: {', '.join(valid)}"
        )


def _did_you_mean(word: str, choices: list[str]) -> str:
    """' (did you mean 'X'?)' for the closest of `choices`, ignoring case; else ''."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(by_lower), n=1)
    return f" (did you mean '{by_lower[close[0]]}'?)" if close else ""


def _applies(o: Override, index: int, opt_cfg: OptimizerConfig) -> bool:
    """Whether optimizer override `o` changes the optimizer of the pair at `index`."""
    if o.target == "optimizer":
        return o.field in _field_names(opt_cfg)
    if o.pair_index() is not None:
        return o.pair_index() == index
    return o.target == opt_cfg.registered_name()


def apply_overrides(
    pairs: list[Pair], items: list[str], only: list[int] | None = None
) -> list[Pair]:
    """Applies `--set` overrides (see `Override`) to the pairs; each config is re-validated.

    Overrides apply in the order given (a later one wins). `optimizer.FIELD` skips pairs
    whose optimizer has no FIELD and is an error only when no pair of the sweep has it; a
    field unknown to a named or indexed target is an error listing its valid keys. Values
    go through `from_dict`, so they are coerced to the field types (e.g. a JSON object for
    a schedule).

    Args:
      pairs: the whole sweep (targets are checked against all of it).
      items: the `--set` strings.
      only: indices of the pairs to change (the others are returned unchanged); None: all.

    Returns:
      The pairs, in the same order, with the overrides applied.
    """
    overrides = parse_overrides(items)
    _check_targets(pairs, overrides)
    selected = set(range(len(pairs))) if only is None else set(only)
    experiment = {o.field: o.value for o in overrides if o.target == "experiment"}
    out = []
    for index, (exp_cfg, opt_cfg) in enumerate(pairs):
        if index not in selected:
            out.append((exp_cfg, opt_cfg))
            continue
        optimizer = {
            o.field: o.value
            for o in overrides
            if o.target != "experiment" and _applies(o, index, opt_cfg)
        }
        if experiment:
            try:
                exp_cfg = ExperimentConfig.from_dict({**exp_cfg.to_dict(), **experiment})
            except ConfigError as e:
                raise ConfigError(f"--set experiment.FIELD: {e}") from e
        if optimizer:
            try:
                opt_cfg = OptimizerConfig.from_dict({**opt_cfg.to_dict(), **optimizer})
            except ConfigError as e:
                name = opt_cfg.registered_name()
                raise ConfigError(f"--set on pair {index} ({name}): {e}") from e
        out.append((exp_cfg, opt_cfg))
    return out


def pair_name(index: int, opt_cfg: OptimizerConfig) -> str:
    """Run-directory name of a pair: '<index>_<optimizer_name>'."""
    return f"{index}_{opt_cfg.registered_name()}"


def pair_to_dict(exp_cfg: ExperimentConfig, opt_cfg: OptimizerConfig) -> dict[str, Any]:
    """The JSON form of a pair (what `config.json` holds)."""
    return {"experiment": exp_cfg.to_dict(), "optimizer": opt_cfg.to_dict()}


def pair_from_dict(d: dict[str, Any]) -> Pair:
    """The pair of its JSON form (`pair_to_dict`, what config.json holds)."""
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
