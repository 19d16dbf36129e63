"""A study's answer from its runs' summaries: per seed the tuned member of each family, and
the families compared over seeds (pure functions over summaries; no files, no plots).

Selection minimises one number per run, read from its summary: the last episode's final
training loss (`final_train_loss`) or the last evaluation's loss on the validation split
(`valid_loss`, a held-out part of the training data). Nothing here reads `eval_*`
metrics for selection, so the test split cannot leak into the choice. A run whose number
is missing or not finite (diverged) counts as +inf: it is never preferred to a finite one,
and the first grid point wins a tie.

Aggregation over seeds: median and interquartile range with numpy's default (linear)
percentile interpolation. A selected grid value at the smallest or largest value of its
axis is flagged: the optimum may lie outside the grid, so the grid should be extended.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

METRICS = ("final_train_loss", "valid_loss")


@dataclasses.dataclass(frozen=True)
class Result:
    """One finished pair of a study, as selection sees it.

    Attributes:
      family: the family's name.
      grid_point: {field: value} of its grid point ({} for an untuned family).
      seed: its seed.
      summary: its summary.json.
      run_dir: its run directory (for plots).
    """

    family: str
    grid_point: dict[str, Any]
    seed: int
    summary: dict[str, Any]
    run_dir: str = ""


def as_number(v: Any) -> float:
    """A metric as a float; missing or non-finite values (written as "nan") are +inf."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.inf
    return x if math.isfinite(x) else math.inf


def last_episode(summary: dict[str, Any]) -> dict[str, Any]:
    """The summary's last episode entry ({} when there is none)."""
    episodes = summary.get("episodes") or [{}]
    return episodes[-1]


def selection_value(summary: dict[str, Any], metric: str) -> float:
    """The number selection minimises for one run (see the module docstring)."""
    if metric == "final_train_loss":
        return as_number(summary.get("last_episode_final_loss"))
    if metric == "valid_loss":
        return as_number(last_episode(summary).get("valid_loss"))
    raise ValueError(f"unknown selection metric {metric!r}; choose one of {', '.join(METRICS)}")


def select(results: list[Result], metric: str) -> dict[tuple[str, int], Result]:
    """{(family, seed): the result with the smallest selection value} (first on ties)."""
    best: dict[tuple[str, int], Result] = {}
    for r in results:
        key = (r.family, r.seed)
        if key not in best or (selection_value(r.summary, metric)
                               < selection_value(best[key].summary, metric)):
            best[key] = r
    return best


@dataclasses.dataclass(frozen=True)
class Spread:
    """Median and interquartile range of a family's values over seeds."""

    median: float
    q25: float
    q75: float

    @property
    def iqr(self) -> float:
        """The interquartile range (q75 - q25)."""
        return self.q75 - self.q25


def quantile(values: list[float], q: float) -> float:
    """The q-quantile by numpy's default rule (linear between the closest ranks), written
    out so that an infinite value (a diverged seed) gives inf where it enters, not NaN."""
    x = sorted(as_number(v) for v in values)
    if not x:
        return math.nan
    position = q * (len(x) - 1)
    lo, hi = math.floor(position), math.ceil(position)
    if lo == hi or x[lo] == x[hi]:
        return x[lo]
    return x[lo] + (x[hi] - x[lo]) * (position - lo)


def spread(values: list[float]) -> Spread:
    """Median and quartiles over seeds; non-finite values count as +inf (worst)."""
    return Spread(quantile(values, 0.5), quantile(values, 0.25), quantile(values, 0.75))


def edge_flags(grid: tuple[tuple[str, tuple[Any, ...]], ...], point: dict[str, Any]
               ) -> list[str]:
    """'<axis> at min' / '<axis> at max' for each numeric axis (2+ values) where `point`
    sits at the smallest / largest value of the grid."""
    flags = []
    for axis, values in grid:
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if len(numbers) < 2 or len(numbers) != len(values) or axis not in point:
            continue
        if point[axis] == min(numbers):
            flags.append(f"{axis} at min")
        elif point[axis] == max(numbers):
            flags.append(f"{axis} at max")
    return flags


@dataclasses.dataclass(frozen=True)
class FamilyRow:
    """One family of the comparison: what was selected, and how it did over seeds.

    Attributes:
      family, tuned: the family and whether it has a grid.
      selected: per seed (sorted), the selected result.
      selection: spread over seeds of the selection metric of the selected members.
      train_loss: spread of their last-episode final training loss.
      ratio_to_best: selection median / the smallest selection median of all families.
      eval_accuracy, valid_accuracy: median over seeds of the selected members' last
        evaluation accuracy on the evaluation (test) / validation split, or None.
      edges: {flag: number of seeds whose selected point has it}.
      diverged: seeds whose selected member is not finite (the whole family diverged).
      runs: finished runs of the family.
    """

    family: str
    tuned: bool
    selected: dict[int, Result]
    selection: Spread
    train_loss: Spread
    ratio_to_best: float
    eval_accuracy: float | None
    valid_accuracy: float | None
    edges: dict[str, int]
    diverged: int
    runs: int


def _median_or_none(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.median(finite)) if finite else None


def compare(families: list[tuple[str, tuple[tuple[str, tuple[Any, ...]], ...]]],
            results: list[Result], metric: str) -> list[FamilyRow]:
    """The study's table: one row per family (in the order given), from finished results.

    Args:
      families: (name, grid) of each family, grid as in `Family.grid` (empty: untuned).
      results: the finished runs.
      metric: the selection metric ("final_train_loss" or "valid_loss").
    """
    best = select(results, metric)
    partial = []
    for name, grid in families:
        chosen = {seed: r for (fam, seed), r in sorted(best.items()) if fam == name}
        if not chosen:
            continue
        values = [selection_value(r.summary, metric) for r in chosen.values()]
        edges: dict[str, int] = {}
        for r in chosen.values():
            for flag in edge_flags(grid, r.grid_point):
                edges[flag] = edges.get(flag, 0) + 1
        partial.append(dict(
            family=name, tuned=bool(grid), selected=chosen, selection=spread(values),
            train_loss=spread([r.summary.get("last_episode_final_loss")
                               for r in chosen.values()]),
            eval_accuracy=_median_or_none([last_episode(r.summary).get("eval_accuracy")
                                           for r in chosen.values()]),
            valid_accuracy=_median_or_none([last_episode(r.summary).get("valid_accuracy")
                                            for r in chosen.values()]),
            edges=edges, diverged=sum(not math.isfinite(v) for v in values),
            runs=sum(r.family == name for r in results)))
    finite = [p["selection"].median for p in partial if math.isfinite(p["selection"].median)]
    best_median = min(finite) if finite else math.nan
    ratio = lambda m: m / best_median if best_median > 0 else math.nan  # nan > 0 is False
    return [FamilyRow(ratio_to_best=ratio(p["selection"].median), **p) for p in partial]


def non_increasing(values: list[float], tolerance: float = 0.2) -> bool:
    """Whether each value is at most (1 + tolerance) x the smallest value before it (a
    sequence of end-of-episode losses that improves steadily, up to noise)."""
    numbers = [as_number(v) for v in values]
    for i in range(1, len(numbers)):
        if not numbers[i] <= (1 + tolerance) * min(numbers[:i]):
            return False
    return True


def episode_end_losses(summary: dict[str, Any]) -> list[float]:
    """The final training loss of each episode of a run (+inf where not finite)."""
    return [as_number(e.get("train_loss")) for e in summary.get("episodes") or []]


@dataclasses.dataclass(frozen=True)
class UntunedRow:
    """An untuned family against the best tuned family, seed by seed.

    Attributes:
      family: the untuned family.
      ratios: per seed, its selection metric over the smallest selected value among the
        tuned families at that seed (the best LR-tuned baseline of that seed).
      median_ratio: the median of `ratios` (a diverged seed counts as +inf).
      steady: seeds whose end-of-episode training loss is non-increasing within 20%.
      episode_end: per episode, the median over seeds of the end-of-episode train loss.
    """

    family: str
    ratios: dict[int, float]
    median_ratio: float
    steady: int
    episode_end: list[float]


def untuned_against_tuned(rows: list[FamilyRow], metric: str) -> list[UntunedRow]:
    """For each untuned family, its ratio to the best tuned family per seed (empty when
    the study has no tuned family)."""
    tuned = [r for r in rows if r.tuned]
    out = []
    for row in rows:
        if row.tuned or not tuned:
            continue
        ratios = {}
        for seed, result in row.selected.items():
            best = min((selection_value(t.selected[seed].summary, metric) for t in tuned
                        if seed in t.selected), default=math.nan)
            value = selection_value(result.summary, metric)
            ratios[seed] = value / best if best > 0 and math.isfinite(best) else math.nan
        curves = [episode_end_losses(r.summary) for r in row.selected.values()]
        length = min(map(len, curves), default=0)
        out.append(UntunedRow(
            family=row.family, ratios=ratios,
            median_ratio=quantile(list(ratios.values()), 0.5),
            steady=sum(non_increasing(c) for c in curves),
            episode_end=[quantile([c[i] for c in curves], 0.5) for i in range(length)]))
    return out
