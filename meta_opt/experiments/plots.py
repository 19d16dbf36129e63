"""PNG plots of run directories (matplotlib, Agg backend: no display needed).

`plot_runs(paths, out_dir)` accepts pair directories (holding `config.json`) or experiment
directories (holding pair directories) and writes:

- `loss.png`: training loss against global step, one line per pair, episodes marked;
- `final_loss_per_episode.png`: loss at the end of each episode, one line per pair;
- `eval_accuracy.png`: held-out accuracy against global step (when evaluated);
- `metaopt_M.png`: MetaOpt's coefficients M_i against global step (MetaOpt pairs only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from meta_opt.experiments.metrics import read_jsonl  # noqa: E402


def find_pair_dirs(paths: list[str | Path]) -> list[Path]:
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


def _load(pair_dir: Path) -> dict[str, Any]:
    config = json.loads((pair_dir / "config.json").read_text())
    label = pair_dir.name
    summary = pair_dir / "summary.json"
    if summary.exists():
        settings = json.loads(summary.read_text()).get("settings")
        label = f"{label} ({settings[:40]})" if settings else label
    return {"name": f"{pair_dir.parent.name}/{pair_dir.name}", "label": label,
            "config": config, "records": read_jsonl(pair_dir / "metrics.jsonl")}


def _series(records, key):
    rows = [r for r in records if isinstance(r.get(key), (int, float))]
    return [r["global_step"] for r in rows], [r[key] for r in rows]


def _episode_marks(ax, runs) -> None:
    iters = {r["config"]["experiment"]["num_iters"] for r in runs}
    episodes = max((r["config"]["experiment"]["num_episodes"] for r in runs), default=1)
    if len(iters) == 1 and episodes > 1:
        n = iters.pop()
        for e in range(1, episodes):
            ax.axvline(e * n, color="0.7", linestyle="--", linewidth=0.8)


def _log_if_positive(ax, values) -> None:
    if values and min(values) > 0:
        ax.set_yscale("log")


def plot_runs(paths: list[str | Path], out_dir: str | Path) -> list[Path]:
    """Writes the PNGs described in the module docstring; returns their paths."""
    runs = [_load(p) for p in find_pair_dirs(paths)]
    runs = [r for r in runs if r["records"]]
    if not runs:
        raise FileNotFoundError(f"no run with metrics under {[str(p) for p in paths]}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    fig, ax = plt.subplots(figsize=(8, 5))
    all_values = []
    for r in runs:
        x, y = _series(r["records"], "train_loss")
        ax.plot(x, y, label=r["label"], linewidth=1.2)
        all_values += y
    _episode_marks(ax, runs)
    _log_if_positive(ax, all_values)
    ax.set(xlabel="global step (dashed: episode starts)", ylabel="training loss",
           title="Training loss")
    ax.legend(fontsize=8)
    written.append(_save(fig, out_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    all_values = []
    for r in runs:
        finals = {}
        for rec in r["records"]:
            finals[rec["episode"]] = rec["train_loss"]
        eps = sorted(finals)
        ax.plot(eps, [finals[e] for e in eps], marker="o", label=r["label"])
        all_values += list(finals.values())
    _log_if_positive(ax, all_values)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="episode (from 0, as in metrics.jsonl)", ylabel="training loss at episode end",
           title="Final loss per episode")
    ax.legend(fontsize=8, loc="best")
    written.append(_save(fig, out_dir / "final_loss_per_episode.png"))

    if any(_series(r["records"], "eval_accuracy")[0] for r in runs):
        fig, ax = plt.subplots(figsize=(8, 5))
        for r in runs:
            x, y = _series(r["records"], "eval_accuracy")
            if x:
                ax.plot(x, y, marker=".", label=r["label"])
        _episode_marks(ax, runs)
        ax.set(xlabel="global step", ylabel="held-out accuracy", title="Evaluation accuracy")
        ax.legend(fontsize=8)
        written.append(_save(fig, out_dir / "eval_accuracy.png"))

    metaopt = [r for r in runs if any(k.startswith("M_") for k in r["records"][-1])]
    if metaopt:
        fig, axes = plt.subplots(len(metaopt), 1, figsize=(8, 3.2 * len(metaopt)), squeeze=False)
        for ax, r in zip(axes[:, 0], metaopt, strict=True):
            keys = sorted((k for k in r["records"][-1] if k.startswith("M_")),
                          key=lambda k: int(k[2:]) if k[2:].isdigit() else 0)
            for k in keys:
                x, y = _series(r["records"], k)
                ax.plot(x, y, label=k)
            _episode_marks(ax, [r])
            ax.set(xlabel="global step", ylabel="coefficient", title=f"MetaOpt M_i: {r['label']}")
            ax.legend(fontsize=8, ncol=4)
        written.append(_save(fig, out_dir / "metaopt_M.png"))
    return written


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
