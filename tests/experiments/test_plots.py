"""Plots from hand-made run directories: what is drawn, not only that a file appears.

Each run directory is written by hand (config.json + metrics.jsonl, the layout `meta-opt
run` writes), including a step-0 line per episode, NaN / inf values as the metrics writer
stores them ("nan", "inf") and one-episode runs. The `*_figure` functions return the
figure before saving, so the tests read the lines, bars and legend back from matplotlib.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.colors as mcolors
import numpy as np
import pytest

from meta_opt import cli
from meta_opt.experiments import plots


def write_run(root: Path, name: str, losses: list[list[float | str]], num_iters: int = 10,
              extra=None, settings: str | None = None) -> Path:
    """A pair directory; losses[e] are episode e's train_loss at steps 0, 5, 10, ..."""
    d = root / name
    d.mkdir(parents=True)
    config = {"experiment": {"num_iters": num_iters, "num_episodes": len(losses)},
              "optimizer": {"optimizer_name": "SGD"}}
    (d / "config.json").write_text(json.dumps(config))
    if settings is not None:
        (d / "summary.json").write_text(json.dumps({"settings": settings}))
    lines = []
    for e, episode in enumerate(losses):
        for k, loss in enumerate(episode):
            step = 5 * k
            rec = {"episode": e, "step": step, "global_step": e * num_iters + step,
                   "train_loss": loss}
            rec.update((extra or {}).get((e, step), {}))
            lines.append(json.dumps(rec) + "\n")
    (d / "metrics.jsonl").write_text("".join(lines))
    return d


def data_lines(ax):
    """The lines of the axes that carry data (not the dashed episode marks)."""
    return [ln for ln in ax.get_lines() if ln.get_linestyle() != "--" and ln.get_label()[0] != "_"]


def test_loss_starts_at_step_zero_and_each_episode_is_its_own_segment(tmp_path):
    write_run(tmp_path, "0_SGD", [[4.0, 2.0, 1.0], [3.5, 1.5, 0.25]])
    (run,) = [plots.load_run(p) for p in plots.find_pair_dirs([tmp_path])]
    fig = plots.loss_figure([run])
    (line,) = data_lines(fig.axes[0])
    x, y = line.get_xdata(), line.get_ydata()
    np.testing.assert_array_equal(x, [0, 5, 10, np.nan, 10, 15, 20])
    np.testing.assert_array_equal(y, [4.0, 2.0, 1.0, np.nan, 3.5, 1.5, 0.25])
    # The dashed episode start and a log scale for positive losses.
    assert [ln.get_xdata()[0] for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"] \
        == [10]
    assert fig.axes[0].get_yscale() == "log"  # positive and spanning a factor >= 10
    # The per-episode plot takes each episode's last line, never its step-0 line.
    (final,) = data_lines(plots.final_loss_figure([run]).axes[0])
    np.testing.assert_array_equal(final.get_ydata(), [1.0, 0.25])


def test_an_episode_that_only_logged_step_zero_has_no_final_loss_yet(tmp_path):
    run = plots.load_run(write_run(tmp_path, "0_SGD", [[4.0, 2.0, 1.0], [3.5]]))
    assert plots.episode_final_losses(run) == {0: 1.0}


def test_non_finite_values_are_left_out_and_marked_where_they_start(tmp_path):
    write_run(tmp_path, "0_SGD", [[4.0, 2.0, "nan"], [3.0, "inf", float("nan")]])
    write_run(tmp_path, "1_AdamW", [[4.0, 1.0, 0.5], [3.0, 0.8, 0.4]])
    runs = [plots.load_run(p) for p in plots.find_pair_dirs([tmp_path])]
    ax = plots.loss_figure(runs).axes[0]
    lines = data_lines(ax)
    assert lines[0].get_label() == "0_SGD [non-finite from step 10]"
    assert lines[1].get_label() == "1_AdamW"
    y = lines[0].get_ydata()
    np.testing.assert_array_equal(y[np.isfinite(y)], [4.0, 2.0, 3.0])
    marks = [ln for ln in ax.get_lines() if ln.get_marker() == plots.NON_FINITE_MARKER]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [10]
    assert marks[0].get_color() == lines[0].get_color()
    written = plots.plot_runs([tmp_path], tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "final_loss_per_episode.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_one_episode_runs_get_bars_of_their_final_loss(tmp_path):
    write_run(tmp_path, "0_SGD", [[4.0, 2.0, 0.5]])
    write_run(tmp_path, "1_AdamW", [[4.0, 1.0, 0.25]])
    write_run(tmp_path, "2_DoG", [[4.0, "nan", "nan"]])
    runs = [plots.load_run(p) for p in plots.find_pair_dirs([tmp_path])]
    ax = plots.final_loss_figure(runs).axes[0]
    assert [bar.get_width() for bar in ax.patches] == [0.5, 0.25]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0_SGD", "1_AdamW", "2_DoG"]
    assert [t.get_text() for t in ax.texts] == ["nan (non-finite)"]
    written = plots.plot_runs([tmp_path], tmp_path / "plots")
    assert [p.name for p in written] == ["loss.png", "final_loss.png"]


def test_palette_does_not_repeat_for_many_series():
    tab10 = [mcolors.to_rgb(c) for c in mcolors.TABLEAU_COLORS.values()]
    assert [mcolors.to_rgb(c) for c in plots.palette(10)] == tab10
    for n in (3, 20, 21, 60):
        colors = {mcolors.to_hex(c) for c in plots.palette(n)}
        assert len(colors) == n


def test_many_runs_get_distinct_colours_and_the_legend_sits_right_of_the_axes(tmp_path):
    for i in range(23):
        write_run(tmp_path, f"{i}_SGD", [[4.0, 2.0 + i / 100, 1.0]])
    runs = [plots.load_run(p) for p in plots.find_pair_dirs([tmp_path])]
    fig = plots.loss_figure(runs)
    ax = fig.axes[0]
    assert len({mcolors.to_hex(ln.get_color()) for ln in data_lines(ax)}) == 23
    fig.canvas.draw()
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # outside, to the right: it covers no curve


def test_metaopt_coefficients_are_plotted_even_when_the_step0_line_lacks_them(tmp_path):
    extra = {(0, 5): {"M_0": 0.1, "M_1": -0.2}, (0, 10): {"M_0": 0.3, "M_1": "nan"}}
    write_run(tmp_path, "0_MetaOpt", [[4.0, 2.0, 1.0]], extra=extra, settings="H=2")
    write_run(tmp_path, "1_SGD", [[4.0, 2.0, 1.0]])
    runs = [plots.load_run(p) for p in plots.find_pair_dirs([tmp_path])]
    fig = plots.metaopt_figure(runs)
    (ax,) = fig.axes
    assert ax.get_title() == "MetaOpt M_i: 0_MetaOpt (H=2)"
    m0, m1 = data_lines(ax)
    assert m0.get_label() == "M_0" and list(m0.get_ydata()) == [0.1, 0.3]
    assert m1.get_label() == "M_1 [non-finite from step 10]"
    assert plots.metaopt_figure(runs[1:]) is None


def eval_result(n_steps: int = 6) -> dict:
    xs = list(range(n_steps))
    return {
        "MLPLOpt@3": {"train/xs": xs, "train/loss": [2.0 - 0.2 * i for i in xs],
                      "eval/xs": [3, 6], "eval/test/loss": [1.5, 1.1],
                      "eval/outer_valid/loss": [1.6, 1.2], "final": {}},
        "Adam(lr=0.001)": {"train/xs": xs, "train/loss": [2.0 - 0.1 * i for i in xs],
                           "eval/xs": [3, 6], "eval/test/loss": [1.8, "nan"],
                           "eval/outer_valid/loss": [1.9, 1.7], "final": {}},
    }


def test_eval_lopt_curves_start_at_step_zero_with_one_colour_per_optimizer():
    fig = plots.eval_lopt_figure(eval_result(), title="ImageMLP")
    ax_train, ax_eval = fig.axes
    assert ax_train.get_yscale() == "linear"  # 2.0 to 1.0: too narrow for a log scale
    lopt, adam = data_lines(ax_train)
    assert lopt.get_xdata()[0] == 0 and lopt.get_ydata()[0] == 2.0
    assert [ln.get_label() for ln in ax_eval.get_lines() if ln.get_marker() == "."] == [
        "MLPLOpt@3 test", "MLPLOpt@3 outer_valid",
        "Adam(lr=0.001) test [non-finite from step 6]", "Adam(lr=0.001) outer_valid"]
    assert lopt.get_color() != adam.get_color()


def test_plot_command_plots_runs_and_eval_files_and_rejects_other_paths(tmp_path, capsys):
    write_run(tmp_path / "exp", "0_SGD", [[4.0, 2.0, 1.0]])
    eval_file = tmp_path / "eval_ImageMLP.json"
    eval_file.write_text(json.dumps(eval_result()))
    out = tmp_path / "out"
    assert cli.main(["plot", str(eval_file), str(tmp_path / "exp"), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "eval_ImageMLP.png", "final_loss.png", "loss.png"]
    meta_train = tmp_path / "meta_train"
    meta_train.mkdir()
    (meta_train / "config.json").write_text(json.dumps({"estimator": "PES"}))
    assert cli.main(["plot", str(meta_train)]) == 2
    assert "pass the eval_<task>.json file" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [
    (1, 1.0), (0.5, 0.5), ("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf),
    (True, None), ("abc", None), (None, None)])
def test_metric_values_are_read_as_floats(value, expected):
    got = plots.as_float(value)
    assert (got is None and expected is None) or np.array_equal(got, expected, equal_nan=True)
