"""PNG plots of a study's report (matplotlib, Agg backend: no display needed).

`plot_study(study, rows, results, out_dir)` writes, for the selected member of each
family and seed (see `selection.py`):

- `episode_end_loss.png`: training loss at the end of each episode, median over seeds
  with a band from the best to the worst seed;
- `selected_loss_curves.png`: training loss against global step, one line per seed;
- `grid_search.png`: per tuned family and grid axis, the selection metric against the
  axis value (the best over the other axes), one line per seed;
- `metaopt_M.png`: MetaOpt's coefficients M_i against global step (MetaOpt families).

Runs that diverged (NaN or infinite values) are left out of a line where they are not
finite; a family with nothing finite to draw is named in the title instead of drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from meta_opt.experiments.metrics import read_jsonl  # noqa: E402
from meta_opt.experiments.selection import (  # noqa: E402
    FamilyRow,
    Result,
    as_number,
    selection_value,
)


def _finite(xs: list[Any], ys: list[Any]) -> tuple[list[float], list[float]]:
    pairs = [(float(x), as_number(y)) for x, y in zip(xs, ys, strict=True)]
    kept = [(x, y) for x, y in pairs if math.isfinite(y)]
    return [x for x, _ in kept], [y for _, y in kept]


def _log_if_positive(ax, values: list[float], axis: str = "y") -> None:
    if values and min(values) > 0:
        (ax.set_yscale if axis == "y" else ax.set_xscale)("log")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _diverged_note(ax, names: list[str], title: str) -> None:
    ax.set_title(title + (f"\n(nothing finite to draw: {', '.join(names)})" if names else ""),
                 fontsize=10)


def episode_end_loss(rows: list[FamilyRow], path: Path) -> Path:
    """End-of-episode training loss per episode: median over seeds, band min..max."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    drawn, skipped = [], []
    for row, color in zip(rows, _colors(len(rows)), strict=True):
        per_seed = [[as_number(e.get("train_loss")) for e in r.summary.get("episodes", [])]
                    for r in row.selected.values()]
        n_eps = min((len(s) for s in per_seed), default=0)
        if not n_eps:
            skipped.append(row.family)
            continue
        values = np.asarray([s[:n_eps] for s in per_seed], float)
        episodes, median, low, high = [], [], [], []
        for e in range(n_eps):
            col = values[:, e][np.isfinite(values[:, e])]
            if col.size:
                episodes.append(e)
                median.append(float(np.median(col)))
                low.append(float(col.min()))
                high.append(float(col.max()))
        if not episodes:
            skipped.append(row.family)
            continue
        ax.plot(episodes, median, marker="o", color=color, label=row.family)
        ax.fill_between(episodes, low, high, color=color, alpha=0.2, linewidth=0)
        drawn += low
    _log_if_positive(ax, drawn)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="episode (from 0)", ylabel="training loss at episode end")
    _diverged_note(ax, skipped, "End-of-episode loss of the selected members "
                                "(median, band: best..worst seed)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def selected_loss_curves(rows: list[FamilyRow], path: Path) -> Path:
    """Training loss against global step of every selected member (one line per seed)."""
    fig, ax = plt.subplots(figsize=(8.5, 5))
    drawn, skipped = [], []
    for row, color in zip(rows, _colors(len(rows)), strict=True):
        any_line = False
        for k, r in enumerate(row.selected.values()):
            records = read_jsonl(Path(r.run_dir) / "metrics.jsonl")
            x, y = _finite([rec["global_step"] for rec in records],
                           [rec.get("train_loss") for rec in records])
            if not x:
                continue
            ax.plot(x, y, color=color, linewidth=1.0, alpha=0.85,
                    label=row.family if not any_line else None,
                    linestyle=("-", "--", ":", "-.")[k % 4])
            any_line = True
            drawn += y
        if not any_line:
            skipped.append(row.family)
    _log_if_positive(ax, drawn)
    ax.set(xlabel="global step (line style: seed)", ylabel="training loss")
    _diverged_note(ax, skipped, "Training loss of the selected members")
    ax.legend(fontsize=8)
    return _save(fig, path)


def grid_search(rows: list[FamilyRow], results: list[Result], grids: dict[str, tuple],
                metric: str, path: Path) -> Path | None:
    """The selection metric against each grid axis's values (best over the other axes)."""
    panels = [(row, axis, values) for row in rows if row.tuned
              for axis, values in grids[row.family]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 3.4 * len(panels)), squeeze=False)
    for ax, (row, axis, values) in zip(axes[:, 0], panels, strict=True):
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        positions = list(values) if numeric else list(range(len(values)))
        seeds = sorted({r.seed for r in results if r.family == row.family})
        drawn, diverged = [], 0
        for k, seed in enumerate(seeds):
            ys = []
            for v in values:
                at = [selection_value(r.summary, metric) for r in results
                      if r.family == row.family and r.seed == seed and r.grid_point.get(axis) == v]
                ys.append(min(at) if at else math.inf)
            x, y = _finite(positions, ys)
            diverged += len(ys) - len(y)
            if x:
                ax.plot(x, y, marker="o", linestyle=("-", "--", ":", "-.")[k % 4],
                        label=f"seed {seed}")
                chosen = row.selected.get(seed)
                if chosen is not None and chosen.grid_point.get(axis) in values:
                    cx = positions[list(values).index(chosen.grid_point[axis])]
                    cy = selection_value(chosen.summary, metric)
                    if math.isfinite(cy):
                        ax.plot([cx], [cy], marker="*", markersize=12, color="k")
                drawn += y
        if numeric:
            _log_if_positive(ax, [float(v) for v in values], axis="x")
        else:
            ax.set_xticks(positions, [str(v) for v in values])
        _log_if_positive(ax, drawn)
        note = f" ({diverged} diverged point(s) not drawn)" if diverged else ""
        ax.set(xlabel=axis, ylabel=metric.replace("_", " "),
               title=f"{row.family}: {axis} (star: selected){note}")
        ax.legend(fontsize=8)
    return _save(fig, path)


def metaopt_coefficients(rows: list[FamilyRow], path: Path) -> Path | None:
    """MetaOpt's M_i against global step for the selected members of MetaOpt families."""
    panels = []
    for row in rows:
        for seed, r in row.selected.items():
            if r.summary.get("optimizer_name") != "MetaOpt":
                continue
            records = read_jsonl(Path(r.run_dir) / "metrics.jsonl")
            keys = sorted({k for rec in records for k in rec
                           if k.startswith("M_") and k[2:].isdigit()}, key=lambda k: int(k[2:]))
            if keys:
                panels.append((f"{row.family}, seed {seed}", records, keys))
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3 * len(panels)), squeeze=False)
    for ax, (title, records, keys) in zip(axes[:, 0], panels, strict=True):
        for key in keys:
            x, y = _finite([rec["global_step"] for rec in records if key in rec],
                           [rec[key] for rec in records if key in rec])
            if x:
                ax.plot(x, y, label=key, linewidth=1.1)
        ax.set(xlabel="global step", ylabel="coefficient", title=f"MetaOpt M_i: {title}")
        ax.legend(fontsize=8, ncol=4)
    return _save(fig, path)


def plot_study(study, rows: list[FamilyRow], results: list[Result], out_dir: Path
               ) -> list[Path]:
    """Writes the PNGs of the module docstring into `out_dir`; returns their paths."""
    out_dir = Path(out_dir)
    written = [episode_end_loss(rows, out_dir / "episode_end_loss.png"),
               selected_loss_curves(rows, out_dir / "selected_loss_curves.png")]
    grids = {f.name: f.grid for f in study.families}
    for extra in (grid_search(rows, results, grids, study.selection_metric,
                              out_dir / "grid_search.png"),
                  metaopt_coefficients(rows, out_dir / "metaopt_M.png")):
        if extra is not None:
            written.append(extra)
    return written
