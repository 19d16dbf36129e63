"""Studies: tuned optimizer families over seeds, declared in a sweep's config file.

A `Study` names one experiment, a list of seeds and a list of `Family`s. A family is an
optimizer config plus a grid over some of its fields (the product of the value lists);
a family without a grid is *untuned*: it runs at its settings over the seeds only (MetaOpt
at its defaults, parameter-free optimizers). `Study.expand()` gives ordinary pairs, one
per (family, grid point, seed), so everything the runner does for pairs applies (grid
members share one compiled program), plus each pair's metadata, which the runner
records in its run directory (`study_member.json`) and `meta-opt report` reads.

    def get_config():
        exp = ExperimentConfig(experiment_name="digits_study", full_batch=True, ...)
        return Study(exp, seeds=(0, 1, 2), families=(
            Family("SGD", SGDConfig(), {"learning_rate": (0.03, 0.1, 0.3, 1.0, 3.0)}),
            Family("AdamW", AdamWConfig(), {"learning_rate": (1e-3, 3e-3, 1e-2, 3e-2)}),
            Family("MetaOpt", MetaOptConfig()),                    # untuned
        ))

Selection (which grid member of a family is "the tuned one", per seed) never reads the
test split: `selection="auto"` is the last episode's final training loss in full-batch
runs and the final validation loss otherwise, on `valid_split` (a held-out part of the
training data; `outer_valid` unless the experiment names one), which the runner
evaluates alongside `eval_split`.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.optimizers.config import ConfigError, OptimizerConfig

SELECTION_METRICS = ("auto", "final_train_loss", "valid_loss")
DEFAULT_VALID_SPLIT = "outer_valid"
STUDY_FILE = "study.json"

GridSpec = dict[str, tuple[Any, ...]] | tuple[tuple[str, tuple[Any, ...]], ...]


def _as_value(v: Any) -> Any:
    """A grid value as JSON writes it back (tuples as lists are turned into tuples)."""
    return tuple(_as_value(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclasses.dataclass(frozen=True)
class Family:
    """One optimizer family of a study.

    Attributes:
      name: its row in the report (e.g. "SGD", "Momentum 0.9", "MetaOpt scalar").
      optimizer: the family's config; grid points change some of its fields.
      grid: field -> values; the grid is their product, axes in the order given. A field
        is an optimizer field, or `experiment.FIELD` for an experiment field. Empty: the
        family is untuned and runs at `optimizer` over the seeds only.
    """

    name: str
    optimizer: OptimizerConfig
    grid: GridSpec = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"Family.name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.optimizer, OptimizerConfig):
            raise ConfigError(f"Family '{self.name}': optimizer must be an OptimizerConfig "
                              f"(e.g. SGDConfig()), got {self.optimizer!r}")
        items = self.grid.items() if isinstance(self.grid, dict) else self.grid
        grid = tuple((str(k), tuple(_as_value(v) for v in values)) for k, values in items)
        object.__setattr__(self, "grid", grid)
        fields = {f.name for f in dataclasses.fields(self.optimizer)}
        exp_fields = {f.name for f in dataclasses.fields(ExperimentConfig)}
        for key, values in grid:
            field = key.removeprefix("experiment.")
            known = exp_fields if key.startswith("experiment.") else fields
            if field not in known or field in ("seed", "experiment_name"):
                where = ("experiment" if key.startswith("experiment.")
                         else f"optimizer '{self.optimizer.registered_name()}'")
                raise ConfigError(
                    f"Family '{self.name}': grid key '{key}' is not a field of the {where}; "
                    f"valid keys: {', '.join(sorted(known - {'seed', 'experiment_name'}))}"
                    f" (seeds are the study's `seeds`)")
            if not values or len(set(map(repr, values))) != len(values):
                raise ConfigError(f"Family '{self.name}': grid '{key}' needs distinct values, "
                                  f"got {list(values)}")
        for point in self.points():  # every grid point must be a valid optimizer now
            changes = {k: v for k, v in point.items() if not k.startswith("experiment.")}
            OptimizerConfig.from_dict({**self.optimizer.to_dict(), **changes})

    @property
    def tuned(self) -> bool:
        """Whether the family has a grid to tune over."""
        return bool(self.grid)

    def points(self) -> list[dict[str, Any]]:
        """Every grid point as {field: value}, axes varying last-fastest; [{}] if untuned."""
        keys = [k for k, _ in self.grid]
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(values for _, values in self.grid))]

    def configs_at(self, point: dict[str, Any], exp: ExperimentConfig
                   ) -> tuple[ExperimentConfig, OptimizerConfig]:
        """The (experiment, optimizer) pair of a grid point (validated)."""
        opt_changes = {k: v for k, v in point.items() if not k.startswith("experiment.")}
        exp_changes = {k.removeprefix("experiment."): v for k, v in point.items()
                       if k.startswith("experiment.")}
        opt = OptimizerConfig.from_dict({**self.optimizer.to_dict(), **opt_changes})
        if exp_changes:
            exp = ExperimentConfig.from_dict({**exp.to_dict(), **exp_changes})
        return exp, opt

    def to_dict(self) -> dict[str, Any]:
        """The family as JSON-ready data (`from_dict` reads it back)."""
        return {"name": self.name, "optimizer": self.optimizer.to_dict(),
                "grid": [[k, list(v)] for k, v in self.grid]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Family:
        """The family of `to_dict`'s data."""
        return cls(d["name"], OptimizerConfig.from_dict(d["optimizer"]),
                   tuple((k, tuple(v)) for k, v in d.get("grid", [])))


@dataclasses.dataclass(frozen=True)
class Study:
    """A tuned comparison: families (with grids) over seeds, on one experiment.

    Attributes:
      experiment: the experiment every pair runs (its seed is replaced by each seed; in
        stochastic runs a missing `valid_split` becomes `outer_valid`, see below).
      families: the optimizer families, each with its grid (or none: untuned).
      seeds: the seeds every grid point runs with.
      selection: how the report picks a family's best grid member per seed: "auto"
        (full batch: "final_train_loss", else "valid_loss"), "final_train_loss" (the last
        episode's final training loss) or "valid_loss" (the last evaluation's loss on the
        validation split). Never the test split.
    """

    experiment: ExperimentConfig
    families: tuple[Family, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    selection: str = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "seeds", tuple(self.seeds))
        if not isinstance(self.experiment, ExperimentConfig):
            raise ConfigError(f"Study.experiment must be an ExperimentConfig, got "
                              f"{self.experiment!r}")
        if not self.families or not all(isinstance(f, Family) for f in self.families):
            raise ConfigError(f"Study.families must be a non-empty list of Family, got "
                              f"{self.families!r}")
        names = [f.name for f in self.families]
        if len(set(names)) != len(names):
            raise ConfigError(f"Study family names must be distinct, got {names}")
        if (not self.seeds or len(set(self.seeds)) != len(self.seeds)
                or not all(isinstance(s, int) and s >= 0 for s in self.seeds)):
            raise ConfigError(f"Study.seeds must be distinct integers >= 0, got "
                              f"{list(self.seeds)}")
        if self.selection not in SELECTION_METRICS:
            raise ConfigError(f"Study.selection must be one of {', '.join(SELECTION_METRICS)}, "
                              f"got {self.selection!r}")
        if self.selection_metric == "valid_loss" and self.experiment.valid_split is None:
            object.__setattr__(self, "experiment",
                               self.experiment.replace(valid_split=DEFAULT_VALID_SPLIT))
        self.expand()  # every pair must be a valid config now, not when it is reached

    @property
    def selection_metric(self) -> str:
        """The metric selection uses: 'final_train_loss' or 'valid_loss'."""
        if self.selection != "auto":
            return self.selection
        return "final_train_loss" if self.experiment.full_batch else "valid_loss"

    def expand(self) -> tuple[list[tuple[ExperimentConfig, OptimizerConfig]],
                              list[dict[str, Any]]]:
        """The study's pairs (family, then grid point, then seed) and their metadata."""
        pairs, metadata = [], []
        for family in self.families:
            for point in family.points():
                for seed in self.seeds:
                    exp, opt = family.configs_at(point, self.experiment.replace(seed=seed))
                    pairs.append((exp, opt))
                    metadata.append({"family": family.name, "tuned": family.tuned,
                                     "grid_point": {k: _jsonable(v) for k, v in point.items()},
                                     "seed": seed})
        return pairs, metadata

    def to_dict(self) -> dict[str, Any]:
        """The study as JSON-ready data (what study.json holds)."""
        return {"experiment": self.experiment.to_dict(),
                "families": [f.to_dict() for f in self.families],
                "seeds": list(self.seeds), "selection": self.selection,
                "selection_metric": self.selection_metric}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Study:
        """The study of `to_dict`'s data (e.g. a study.json)."""
        return cls(ExperimentConfig.from_dict(d["experiment"]),
                   tuple(Family.from_dict(f) for f in d["families"]),
                   tuple(d["seeds"]), d.get("selection", "auto"))


def _jsonable(v: Any) -> Any:
    return [_jsonable(x) for x in v] if isinstance(v, tuple) else v
