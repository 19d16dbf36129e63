"""PNG plots of run directories and of `eval-lopt` results (matplotlib, Agg: no display).

`plot_runs(paths, out_dir)` accepts pair directories (holding `config.json`) or experiment
directories (holding pair directories) and writes:

- `loss.png`: training loss against global step, one line per pair, from the loss before
  the first step (a metrics line at step 0, when the run wrote one) to the last; each
  episode is its own segment and episode starts are dashed;
- `final_loss_per_episode.png`: the loss at the end of each episode, one line per pair;
  when every run has a single episode that plot would be one dot per pair, so
  `final_loss.png` shows the final losses as bars instead;
- `eval_accuracy.png`: held-out accuracy against global step (when evaluated);
- `metaopt_M.png`: MetaOpt's coefficients M_i against global step (MetaOpt pairs only).

`plot_eval_lopt(eval_json, out_dir)` draws the training curves of an `eval_<task>.json`
written by `meta-opt eval-lopt` (the learned optimizer against Adam); `meta_loss_figure`
draws a meta-train run's meta-loss.

Every figure keeps its legend outside the axes and colours series with `palette`, which
does not repeat colours however many series there are. NaN and infinite values (written
as "nan" / "inf" in metrics.jsonl) are left out of the lines; where a run first turns
non-finite an "x" is drawn at the top of the axes and its legend entry says from which
step. Each `*_figure` function returns the matplotlib figure before it is saved, so what
is drawn can be inspected.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from meta_opt.experiments.metrics import read_jsonl  # noqa: E402

NON_FINITE_MARKER = "x"


@dataclasses.dataclass(frozen=True)
class Run:
    """What the plots need of one pair directory."""

    label: str
    num_iters: int
    num_episodes: int
    records: list[dict[str, Any]]


def palette(n: int) -> list[tuple[float, ...]]:
    """`n` distinct colours (RGB(A) tuples), in a stable order.

    Up to 20 series get tab20's colours, its dark shades first (the first 10 are tab10's);
    beyond that, `n` evenly spaced colours of the continuous `turbo` colormap, so no two
    series share a colour.
    """
    if n <= 20:
        tab20 = plt.get_cmap("tab20").colors
        return list((tab20[0::2] + tab20[1::2])[:n])
    return [tuple(c) for c in plt.get_cmap("turbo")(np.linspace(0.03, 0.97, n))]


def find_pair_dirs(paths: Sequence[str | Path]) -> list[Path]:
    """Pair directories under `paths` (each given path is a pair or an experiment folder)."""
    out = []
    for p in map(Path, paths):
        if (p / "config.json").exists():
            out.append(p)
        elif p.is_dir():
            out += sorted((c for c in p.iterdir() if (c / "config.json").exists()),
                          key=lambda c: (_index(c.name), c.name))
        else:
            raise FileNotFoundError(f"'{p}' is neither a run directory (with config.json) nor "
                                    f"a folder of run directories")
    return out


def _index(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def _read_json(path: Path) -> Any:
    """A JSON file's value; ValueError naming the file when it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); the "
                         f"run directory is damaged") from None


def load_run(pair_dir: str | Path) -> Run:
    """Reads a pair directory's config, summary (for the label) and metrics."""
    pair_dir = Path(pair_dir)
    config = _read_json(pair_dir / "config.json")
    experiment = config.get("experiment")
    if not isinstance(experiment, dict):
        raise FileNotFoundError(
            f"'{pair_dir}' is not a `meta-opt run` pair directory (its config.json has no "
            f"'experiment'); for `meta-opt eval-lopt` results pass the eval_<task>.json file"
        )
    label = pair_dir.name
    summary = pair_dir / "summary.json"
    if summary.exists():
        settings = _read_json(summary).get("settings")
        label = f"{label} ({settings[:40]})" if settings else label
    return Run(label=label, num_iters=int(experiment["num_iters"]),
               num_episodes=int(experiment["num_episodes"]),
               records=read_jsonl(pair_dir / "metrics.jsonl"))


def as_float(value: Any) -> float | None:
    """A metrics value as a float (NaN / inf included), or None when it is not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in ("nan", "inf", "-inf", "infinity",
                                                      "-infinity"):
        return float(value)
    return None


@dataclasses.dataclass(frozen=True)
class Series:
    """A line to draw: x and y with NaN where it breaks, and where it first went non-finite."""

    x: np.ndarray
    y: np.ndarray
    first_non_finite_x: float | None

    def finite_y(self) -> np.ndarray:
        """The y values that are numbers (the breaks and non-finite points left out)."""
        return self.y[np.isfinite(self.y)]


def series(records: Sequence[Mapping[str, Any]], key: str, x_key: str = "global_step",
           break_on: str | None = "episode") -> Series:
    """`key` against `x_key` over the records that hold a number for it.

    Non-finite values become NaN (a gap in the line); a NaN is also inserted where
    `break_on` changes (episode boundaries), so each episode is its own segment.
    """
    xs: list[float] = []
    ys: list[float] = []
    first_bad = None
    previous_group = None
    for r in records:
        y = as_float(r.get(key))
        if y is None or r.get(x_key) is None:
            continue
        group = r.get(break_on) if break_on else None
        if xs and group != previous_group:
            xs.append(math.nan)
            ys.append(math.nan)
        previous_group = group
        if not math.isfinite(y):
            first_bad = r[x_key] if first_bad is None else first_bad
            y = math.nan
        xs.append(float(r[x_key]))
        ys.append(y)
    return Series(np.asarray(xs, float), np.asarray(ys, float), first_bad)


def _draw(ax, s: Series, label: str, color, **kwargs) -> None:
    """Plots `s`; marks where it went non-finite with an x at the top of the axes."""
    if s.first_non_finite_x is not None:
        label = f"{label} [non-finite from step {s.first_non_finite_x:g}]"
    ax.plot(s.x, s.y, label=label, color=color, **kwargs)
    if s.first_non_finite_x is not None:
        # x in data coordinates, y at the top edge of the axes (there is no y to plot).
        ax.plot([s.first_non_finite_x], [0.98], marker=NON_FINITE_MARKER, markersize=9,
                markeredgewidth=2, color=color, linestyle="none",
                transform=ax.get_xaxis_transform(), clip_on=False)


def _legend_outside(ax) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                  fontsize=8, frameon=False, ncol=1 + len(handles) // 25)


def _log_if_wide(ax, values: np.ndarray, axis: str = "y") -> None:
    """A log scale when the finite values are positive and span at least a factor 10."""
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() >= 10 * values.min():
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _episode_marks(ax, runs: Sequence[Run]) -> None:
    iters = {r.num_iters for r in runs}
    episodes = max((r.num_episodes for r in runs), default=1)
    if len(iters) == 1 and episodes > 1:
        n = iters.pop()
        for e in range(1, episodes):
            ax.axvline(e * n, color="0.7", linestyle="--", linewidth=0.8)


def loss_figure(runs: Sequence[Run]) -> Figure:
    """Training loss against global step, one line (one segment per episode) per run."""
    fig, ax = plt.subplots(figsize=(9, 5))
    values = []
    for r, color in zip(runs, palette(len(runs)), strict=True):
        s = series(r.records, "train_loss")
        _draw(ax, s, r.label, color, linewidth=1.2)
        values.append(s.finite_y())
    _episode_marks(ax, runs)
    _log_if_wide(ax, np.concatenate(values) if values else np.zeros(0))
    ax.set(xlabel="global step (dashed: episode starts)", ylabel="training loss",
           title="Training loss")
    _legend_outside(ax)
    return fig


def episode_final_losses(run: Run) -> dict[int, float]:
    """{episode: training loss of its last metrics line}; step-0 lines are not an end."""
    finals: dict[int, float] = {}
    for rec in run.records:
        value = as_float(rec.get("train_loss"))
        if value is not None and rec.get("step", 1) > 0:
            finals[int(rec["episode"])] = value
    return finals


def final_loss_figure(runs: Sequence[Run]) -> Figure:
    """Final loss per episode (lines), or per run (bars) when no run has two episodes."""
    finals = [episode_final_losses(r) for r in runs]
    colors = palette(len(runs))
    values = np.asarray([v for f in finals for v in f.values()], float)
    if max((len(f) for f in finals), default=0) <= 1:
        return _final_loss_bars(runs, finals, colors, values)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r, f, color in zip(runs, finals, colors, strict=True):
        records = [{"episode": e, "train_loss": v} for e, v in sorted(f.items())]
        s = series(records, "train_loss", x_key="episode", break_on=None)
        _draw(ax, s, r.label, color, marker="o")
    _log_if_wide(ax, values)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="episode (from 0, as in metrics.jsonl)", ylabel="training loss at episode end",
           title="Final loss per episode")
    _legend_outside(ax)
    return fig


def _final_loss_bars(runs, finals, colors, values) -> Figure:
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(runs)))
    ys = np.arange(len(runs))
    for y, f, color in zip(ys, finals, colors, strict=True):
        value = next(iter(f.values()), math.nan)
        if math.isfinite(value):
            ax.barh(y, value, color=color)
        else:
            ax.text(0.01, y, f"{value} (non-finite)" if f else "no finished episode",
                    transform=ax.get_yaxis_transform(), va="center", fontsize=8)
    ax.set_yticks(ys, [r.label for r in runs], fontsize=8)
    ax.invert_yaxis()  # first run on top, as in the legend of the other plots
    _log_if_wide(ax, values, axis="x")
    ax.set(xlabel="training loss at the end of the run", title="Final training loss (one episode)")
    return fig


def eval_accuracy_figure(runs: Sequence[Run]) -> Figure | None:
    """Held-out accuracy against global step, or None when no run was evaluated."""
    curves = [series(r.records, "eval_accuracy") for r in runs]
    if not any(c.x.size for c in curves):
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    for r, s, color in zip(runs, curves, palette(len(runs)), strict=True):
        if s.x.size:
            _draw(ax, s, r.label, color, marker=".")
    _episode_marks(ax, runs)
    ax.set(xlabel="global step", ylabel="held-out accuracy", title="Evaluation accuracy")
    _legend_outside(ax)
    return fig


def _m_keys(run: Run) -> list[str]:
    keys = {k for rec in run.records for k in rec if k.startswith("M_") and k[2:].isdigit()}
    return sorted(keys, key=lambda k: int(k[2:]))


def metaopt_figure(runs: Sequence[Run]) -> Figure | None:
    """MetaOpt's coefficients M_i against global step, one panel per MetaOpt run."""
    metaopt = [r for r in runs if _m_keys(r)]
    if not metaopt:
        return None
    fig, axes = plt.subplots(len(metaopt), 1, figsize=(9, 3.2 * len(metaopt)), squeeze=False,
                             layout="constrained")
    for ax, r in zip(axes[:, 0], metaopt, strict=True):
        keys = _m_keys(r)
        for k, color in zip(keys, palette(len(keys)), strict=True):
            _draw(ax, series(r.records, k), k, color)
        _episode_marks(ax, [r])
        ax.set(xlabel="global step", ylabel="coefficient", title=f"MetaOpt M_i: {r.label}")
        _legend_outside(ax)
    return fig


def plot_runs(paths: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """Writes the PNGs described in the module docstring; returns their paths."""
    runs = [load_run(p) for p in find_pair_dirs(paths)]
    runs = [r for r in runs if r.records]
    if not runs:
        raise FileNotFoundError(f"no run with metrics under {[str(p) for p in paths]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    one_episode = max(len(episode_final_losses(r)) for r in runs) <= 1
    figures = {
        "loss.png": loss_figure(runs),
        "final_loss.png" if one_episode else "final_loss_per_episode.png": final_loss_figure(runs),
        "eval_accuracy.png": eval_accuracy_figure(runs),
        "metaopt_M.png": metaopt_figure(runs),
    }
    return [save(fig, out_dir / name) for name, fig in figures.items() if fig is not None]


def eval_lopt_figure(result: Mapping[str, Mapping[str, Any]], title: str = "") -> Figure:
    """Training loss (top) and held-out losses (bottom) of each optimizer in an eval result.

    `result` maps an optimizer's name to its curves as `meta-opt eval-lopt` writes them:
    "train/xs", "train/loss" (the loss before each step, so step 0 is the initial loss),
    "eval/xs" and "eval/<split>/loss" (test solid, outer_valid dashed).
    """
    fig, (ax_train, ax_eval) = plt.subplots(2, 1, figsize=(9, 8), layout="constrained")
    train_values, eval_values = [], []
    for (name, curves), color in zip(result.items(), palette(len(result)), strict=True):
        train = series(_rows(curves, "train/xs", "train/loss"), "y", x_key="x", break_on=None)
        _draw(ax_train, train, name, color)
        train_values.append(train.finite_y())
        for split, style in (("test", "-"), ("outer_valid", "--")):
            key = f"eval/{split}/loss"
            if key in curves:
                s = series(_rows(curves, "eval/xs", key), "y", x_key="x", break_on=None)
                _draw(ax_eval, s, f"{name} {split}", color, linestyle=style, marker=".")
                eval_values.append(s.finite_y())
    for ax, values, what in ((ax_train, train_values, "training loss"),
                             (ax_eval, eval_values, "held-out loss")):
        _log_if_wide(ax, np.concatenate(values) if values else np.zeros(0))
        ax.set(xlabel="inner step", ylabel=what)
        _legend_outside(ax)
    ax_train.set_title(f"{title}: training loss" if title else "Training loss")
    ax_eval.set_title("Held-out loss (test solid, outer_valid dashed)")
    return fig


def meta_loss_figure(records: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """`meta-opt meta-train`'s meta-loss (window mean) against meta-step."""
    fig, ax = plt.subplots(figsize=(7, 4), layout="constrained")
    s = series(records, "meta_loss", x_key="step", break_on=None)
    _draw(ax, s, "meta-loss", palette(1)[0])
    _log_if_wide(ax, s.finite_y())
    ax.set(xlabel="meta-step", ylabel="meta-loss (window mean)", title=title)
    _legend_outside(ax)
    return fig


def _rows(curves: Mapping[str, Any], x_key: str, y_key: str) -> list[dict[str, Any]]:
    xs, ys = np.ravel(curves.get(x_key, [])), np.ravel(curves.get(y_key, []))
    return [{"x": x, "y": y} for x, y in zip(xs.tolist(), ys.tolist(), strict=False)]


def plot_eval_lopt(eval_json: str | Path, out_dir: str | Path) -> Path:
    """Writes `<out_dir>/<eval json's name>.png` from an `eval-lopt` result file."""
    eval_json = Path(eval_json)
    result = json.loads(eval_json.read_text())
    if not isinstance(result, dict) or not all(
        isinstance(c, dict) and "train/loss" in c for c in result.values()
    ):
        raise FileNotFoundError(f"'{eval_json}' is not an eval-lopt result (expected "
                                f"{{optimizer: {{'train/loss': ..., ...}}}})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    task = eval_json.stem.removeprefix("eval_")
    return save(eval_lopt_figure(result, title=task), out_dir / f"{eval_json.stem}.png")


def save(fig: Figure, path: Path) -> Path:
    """Saves `fig` (legends outside the axes included) and closes it."""
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
