"""The report of a study folder: a Markdown table of the families and its plots.

`write_report(exp_dir, out_dir)` reads `study.json` (written by `meta-opt run` for a
config that returns a `Study`) and every finished pair's `summary.json` and
`study_member.json`, selects per seed each family's best grid member on the study's
selection metric (`selection.py`: never the test split), and writes `report.md` and the
PNGs of `report_plots.py` into `out_dir`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from meta_opt.experiments.run_dir import CONFIG_FILE, SUMMARY_FILE
from meta_opt.experiments.run_group import STUDY_MEMBER_FILE
from meta_opt.experiments.selection import (
    FamilyRow,
    Result,
    compare,
    selection_value,
    untuned_against_tuned,
)
from meta_opt.experiments.study import STUDY_FILE, Study

METRIC_NAMES = {"final_train_loss": "last-episode final train loss",
                "valid_loss": "final validation loss"}


def load_study(exp_dir: str | Path) -> tuple[Study, list[Result], int]:
    """(the study, its finished results, the number of its pairs found) of a folder."""
    exp_dir = Path(exp_dir)
    path = exp_dir / STUDY_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"'{exp_dir}' is not a study folder (no {STUDY_FILE}); pass the folder that "
            f"`meta-opt run` wrote for a config whose get_config() returns a Study "
            f"(OUT/<experiment_name>)")
    study = Study.from_dict(json.loads(path.read_text()))
    results, found = [], 0
    for pair in sorted(p for p in exp_dir.iterdir() if (p / CONFIG_FILE).exists()):
        member = pair / STUDY_MEMBER_FILE
        if not member.exists():
            continue
        found += 1
        if not (pair / SUMMARY_FILE).exists():
            continue
        meta = json.loads(member.read_text())
        results.append(Result(meta["family"], meta["grid_point"], meta["seed"],
                              json.loads((pair / SUMMARY_FILE).read_text()), str(pair)))
    return study, results, found


def _g(x: float | None, spec: str = ".4g") -> str:
    if x is None:
        return "-"
    return format(x, spec) if math.isfinite(x) else ("inf" if x > 0 else "nan")


def _selected_text(row: FamilyRow) -> str:
    """'learning_rate=0.1 (seeds 0, 1), 0.3 (seed 2)' per grid axis; '-' if untuned."""
    if not row.tuned:
        return "- (untuned)"
    axes: dict[str, dict[str, list[int]]] = {}
    for seed, r in row.selected.items():
        for axis, value in r.grid_point.items():
            axes.setdefault(axis, {}).setdefault(json.dumps(value), []).append(seed)
    parts = []
    for axis, by_value in axes.items():
        if len(by_value) == 1:
            parts.append(f"{axis}={next(iter(by_value))} (all seeds)")
            continue
        items = [f"{v} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
                 for v, seeds in by_value.items()]
        parts.append(f"{axis}=" + ", ".join(items))
    return "; ".join(parts)


def _edges_text(row: FamilyRow) -> str:
    seeds = len(row.selected)
    flags = [f"{flag} ({n}/{seeds} seeds)" for flag, n in sorted(row.edges.items())]
    return "; ".join(flags) if flags else "-"


def markdown(study: Study, rows: list[FamilyRow], complete: int, total: int,
             plots: list[Path]) -> str:
    """The report's Markdown text."""
    exp = study.experiment
    metric = study.selection_metric
    mode = "full batch" if exp.full_batch else f"batch {exp.batch_size}"
    eval_name = "test" if exp.eval_split == "test" else exp.eval_split
    stochastic = metric == "valid_loss"
    lines = [
        f"# Study `{exp.experiment_name}`",
        "",
        f"Workload `{exp.workload_name}`, {mode}, {exp.num_episodes} episodes x "
        f"{exp.num_iters} steps, seed{'s' if len(study.seeds) > 1 else ''} "
        f"{', '.join(map(str, study.seeds))}; "
        f"{complete} of {total} runs complete.",
        "",
        f"Selection: per seed, each family's grid member with the lowest {METRIC_NAMES[metric]}"
        + (f" (split `{exp.valid_split}`, held out from the training data)" if stochastic
           else "") + f"; the `{exp.eval_split}` split is never read for it. Values: median "
        f"[interquartile range] over seeds of the selected members; ratio: the family's "
        f"median {METRIC_NAMES[metric]} over the best family's.",
        "",
    ]
    header = ["family", "selected", "final train loss", "ratio to best"]
    if stochastic:
        header.insert(3, "valid loss")
    header += [f"{eval_name} acc"] + (["valid acc"] if stochastic else []) + ["grid edge"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [row.family, _selected_text(row),
                 f"{_g(row.train_loss.median)} [{_g(row.train_loss.q25)}, "
                 f"{_g(row.train_loss.q75)}]",
                 _g(row.ratio_to_best, ".3g")]
        if stochastic:
            cells.insert(3, f"{_g(row.selection.median)} [{_g(row.selection.q25)}, "
                            f"{_g(row.selection.q75)}]")
        cells.append(_g(row.eval_accuracy))
        if stochastic:
            cells.append(_g(row.valid_accuracy))
        cells.append(_edges_text(row))
        if row.diverged:
            cells[0] += f" ({row.diverged} seed(s) diverged)"
        lines.append("| " + " | ".join(cells) + " |")
    untuned = untuned_against_tuned(rows, metric)
    if untuned:
        lines += ["", "## Untuned families against the best tuned family", "",
                  f"Per seed: the untuned family's {METRIC_NAMES[metric]} over the best "
                  f"tuned family's at that seed (below 1: the untuned family wins). Steady: "
                  f"seeds whose end-of-episode train loss never rises more than 20% above "
                  f"its best so far.", "",
                  "| family | ratio per seed | median ratio | steady | end-of-episode train "
                  "loss (median over seeds) |", "|---|---|---|---|---|"]
        for u in untuned:
            per_seed = ", ".join(f"{_g(v, '.3g')} (seed {s})" for s, v in u.ratios.items())
            curve = ", ".join(_g(v, ".3g") for v in u.episode_end)
            lines.append(f"| {u.family} | {per_seed} | {_g(u.median_ratio, '.3g')} | "
                         f"{u.steady}/{len(u.ratios)} | {curve} |")
    lines += ["", "## Per seed", "",
              "| family | seed | selected | " + METRIC_NAMES[metric] + " | run |",
              "|---|---|---|---|---|"]
    for row in rows:
        for seed, r in row.selected.items():
            point = ", ".join(f"{k}={v}" for k, v in r.grid_point.items()) or "-"
            lines.append(f"| {row.family} | {seed} | {point} | "
                         f"{_g(selection_value(r.summary, metric))} | {Path(r.run_dir).name} |")
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(exp_dir: str | Path, out_dir: str | Path | None = None, *,
                 plots: bool = True) -> dict[str, Any]:
    """Writes `report.md` (and, with `plots`, the PNGs) of a study folder; returns
    {"markdown", "files"}."""
    from meta_opt.experiments.report_plots import plot_study

    exp_dir = Path(exp_dir)
    out_dir = exp_dir / "report" if out_dir is None else Path(out_dir)
    study, results, found = load_study(exp_dir)
    if not results:
        raise FileNotFoundError(f"no finished run of the study in '{exp_dir}' ({found} "
                                f"started); run the study's config first")
    families = [(f.name, f.grid) for f in study.families]
    rows = compare(families, results, study.selection_metric)
    total = sum(len(f.points()) for f in study.families) * len(study.seeds)
    out_dir.mkdir(parents=True, exist_ok=True)
    pngs = plot_study(study, rows, results, out_dir) if plots else []
    text = markdown(study, rows, len(results), total, pngs)
    (out_dir / "report.md").write_text(text)
    return {"markdown": text, "files": [out_dir / "report.md", *pngs]}
