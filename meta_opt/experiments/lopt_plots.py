"""PNG plots of the learned-optimizer commands (matplotlib, Agg backend).

- `plot_meta_loss`: `meta-opt meta-train`'s meta_loss.png, the window-mean meta-loss of
  each logged meta-step.
- `plot_training_curves`: `meta-opt eval-lopt`'s eval_<task>.png, training loss against
  step for the learned optimizer and each Adam baseline (test loss at the evaluations
  dashed), from step 0. Non-finite points are left out (a diverged run shows as a gap),
  and the loss axis is logarithmic when every loss is positive.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib  # noqa: PLC0415 - slow import, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def plot_meta_loss(records: list[dict], path: Path, title: str) -> None:
    """Writes the meta-loss curve of a meta-train run's metrics records to `path`."""
    plt = _pyplot()
    steps = np.asarray([r["step"] for r in records], float)
    loss = np.asarray([r["meta_loss"] for r in records], float)
    keep = np.isfinite(loss)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(steps[keep], loss[keep])
    ax.set_xlabel("meta-step")
    ax.set_ylabel("meta-loss (window mean)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_training_curves(curves: dict[str, dict], path: Path, title: str) -> None:
    """Writes train (solid) and test (dashed, at evaluations) loss of each optimizer.

    Args:
      curves: {label: eval_training curves dict (train/xs, train/loss, eval/xs, ...)}.
      path: the PNG to write.
      title: the plot's title (e.g. the task name).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    positive = True
    for i, (label, c) in enumerate(curves.items()):
        color = colors(i % colors.N)
        for xs, ys, style, name in (
            (c["train/xs"], c["train/loss"], "-", "train"),
            (c["eval/xs"], c["eval/test/loss"], "--", "test"),
        ):
            xs, ys = np.asarray(xs, float), np.asarray(ys, float)
            keep = np.isfinite(ys)
            positive &= bool(np.all(ys[keep] > 0))
            marker = "o" if name == "test" else None
            ax.plot(
                xs[keep],
                ys[keep],
                style,
                color=color,
                marker=marker,
                markersize=3,
                label=f"{label} ({name})",
            )
    if positive:
        ax.set_yscale("log")
    ax.set_xlim(left=0)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
