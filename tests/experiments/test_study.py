"""Studies: declaration and expansion, selection that never reads the test split, the
aggregation arithmetic (median, IQR, grid-edge flags, ratios), and `meta-opt report` on a
small real study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import runner_toy as toy

from meta_opt import cli
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.report import load_study
from meta_opt.experiments.selection import (
    Result,
    compare,
    edge_flags,
    non_increasing,
    select,
    spread,
    untuned_against_tuned,
)
from meta_opt.experiments.study import Family, Study
from meta_opt.optimizers import SGDConfig
from meta_opt.optimizers.config import ConfigError

EXP = dict(experiment_name="study", workload_name=toy.TOY_TASK, num_episodes=2, num_iters=8,
           log_every=4, checkpoint_every=8, eval_every=4, eval_batches=2, batch_size=16)


def test_a_study_expands_to_pairs_with_their_family_grid_point_and_seed():
    study = Study(ExperimentConfig(**EXP, full_batch=False), seeds=(3, 4), families=(
        Family("SGD", SGDConfig(), {"learning_rate": (0.1, 1.0), "momentum": (0.0, 0.9)}),
        Family("plain", SGDConfig(learning_rate=0.3))))
    pairs, metadata = study.expand()
    assert len(pairs) == (4 + 1) * 2
    assert [(m["family"], m["seed"]) for m in metadata[:3]] == [("SGD", 3), ("SGD", 4),
                                                                 ("SGD", 3)]
    assert metadata[2]["grid_point"] == {"learning_rate": 0.1, "momentum": 0.9}
    assert (pairs[2][1].learning_rate, pairs[2][1].momentum, pairs[2][0].seed) == (0.1, 0.9, 3)
    assert metadata[-1] == {"family": "plain", "tuned": False, "grid_point": {}, "seed": 4}
    # Stochastic runs select on a validation split of the training data, never on test.
    assert study.selection_metric == "valid_loss"
    assert all(e.valid_split == "outer_valid" for e, _ in pairs)
    assert Study.from_dict(json.loads(json.dumps(study.to_dict()))) == study
    full = Study(ExperimentConfig(**EXP, full_batch=True), (Family("p", SGDConfig()),))
    assert full.selection_metric == "final_train_loss" and full.experiment.valid_split is None


@pytest.mark.parametrize("make, message", [
    (lambda: Family("SGD", SGDConfig(), {"lr": (0.1,)}), "valid keys: grad_clip, learning_rate"),
    (lambda: Family("SGD", SGDConfig(), {"learning_rate": (0.1, 0.1)}), "distinct values"),
    (lambda: Family("SGD", SGDConfig(), {"learning_rate": (-1.0,)}), "learning_rate must be"),
    (lambda: Family("SGD", SGDConfig(), {"experiment.seed": (1, 2)}), "study's `seeds`"),
    (lambda: Study(ExperimentConfig(**EXP), (Family("a", SGDConfig()),) * 2), "distinct"),
    (lambda: Study(ExperimentConfig(**EXP), (Family("a", SGDConfig()),), selection="test"),
     "must be one of auto, final_train_loss, valid_loss"),
])
def test_bad_study_declarations_fail_with_the_fix(make, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("`", ".")):
        make()


# --- selection and aggregation on hand-made summaries ------------------------------------
def _summary(final: float, valid: float | None = None, test_acc: float = 0.5,
             test_loss: float = 1.0) -> dict:
    last = {"train_loss": final, "eval_accuracy": test_acc, "eval_loss": test_loss}
    if valid is not None:
        last["valid_loss"] = valid
    return {"last_episode_final_loss": final, "episodes": [{"train_loss": 2 * final}, last]}


GRID = (("learning_rate", (0.01, 0.1, 1.0)),)
# Final train loss per (seed, learning rate); "nan" is a diverged run.
FINAL = {0: [0.5, 0.2, 0.3], 1: [0.4, 0.6, 0.1], 2: ["nan", 0.3, 0.35]}


def _hand_made(test_loss=lambda seed, lr: 1.0) -> list[Result]:
    out = [Result("A", {"learning_rate": lr}, seed,
                  _summary(FINAL[seed][k], test_loss=test_loss(seed, lr),
                           test_acc=0.9 - 0.1 * k))
           for seed in FINAL for k, lr in enumerate(GRID[0][1])]
    out += [Result("B", {}, seed, _summary(v, test_acc=0.7))
            for seed, v in zip(FINAL, [0.4, 0.5, 0.6], strict=True)]
    return out


def test_aggregation_arithmetic_on_hand_made_summaries():
    rows = compare([("A", GRID), ("B", ())], _hand_made(), "final_train_loss")
    a, b = rows
    # Per seed, the smallest final loss; the diverged run (nan) is never chosen.
    assert {s: r.grid_point["learning_rate"] for s, r in a.selected.items()} == {
        0: 0.1, 1: 1.0, 2: 0.1}
    # Selected values 0.2, 0.1, 0.3: median 0.2; linear quartiles at 0.15 and 0.25.
    assert a.selection.median == pytest.approx(0.2)
    assert (a.selection.q25, a.selection.q75) == pytest.approx((0.15, 0.25))
    assert a.selection.iqr == pytest.approx(0.1)
    assert a.train_loss == a.selection  # full batch: the selection metric is the train loss
    assert a.edges == {"learning_rate at max": 1} and b.edges == {}
    assert a.eval_accuracy == pytest.approx(0.8)  # accuracies 0.8, 0.7, 0.8 of the chosen
    assert (a.ratio_to_best, b.ratio_to_best) == pytest.approx((1.0, 2.5))  # 0.5 / 0.2
    assert (a.runs, b.runs, a.diverged) == (9, 3, 0)
    even = spread([4.0, 1.0, 3.0, 2.0])
    assert (even.median, even.q25, even.q75) == pytest.approx((2.5, 1.75, 3.25))
    diverged = spread([1.0, "nan", 2.0])  # a diverged seed counts as the worst
    assert (diverged.median, diverged.q25, diverged.q75) == (2.0, 1.5, math.inf)
    assert spread([3.0, 1.0, 2.0]).median == float(np.median([3.0, 1.0, 2.0]))
    assert edge_flags(GRID, {"learning_rate": 0.01}) == ["learning_rate at min"]
    assert edge_flags(GRID, {"learning_rate": 0.1}) == []
    assert edge_flags((("m", ("a", "b")),), {"m": "a"}) == []  # not a numeric axis


def test_untuned_family_against_the_best_tuned_family_seed_by_seed():
    c_grid = (("learning_rate", (0.5, 5.0)),)  # a second tuned family, best at seed 0 only
    results = _hand_made() + [Result("C", {"learning_rate": lr}, seed, _summary(final))
                              for seed, finals in {0: (0.15, 0.6), 1: (0.9, 0.8),
                                                   2: (0.7, 0.9)}.items()
                              for lr, final in zip((0.5, 5.0), finals, strict=True)]
    rows = compare([("A", GRID), ("C", c_grid), ("B", ())], results, "final_train_loss")
    (b,) = untuned_against_tuned(rows, "final_train_loss")
    # B's finals 0.4, 0.5, 0.6 over the best tuned member per seed: C's 0.15 at seed 0,
    # A's 0.1 and 0.3 at seeds 1 and 2.
    assert b.family == "B" and b.ratios == pytest.approx({0: 0.4 / 0.15, 1: 5.0, 2: 2.0})
    assert b.median_ratio == pytest.approx(0.4 / 0.15)
    assert b.episode_end == pytest.approx([1.0, 0.5])  # median over seeds per episode
    assert b.steady == 3  # each B run halves its loss from episode 1 to 2
    assert untuned_against_tuned(rows[2:], "final_train_loss") == []  # nothing tuned
    assert non_increasing([1.0, 0.5, 0.59]) and not non_increasing([1.0, 0.5, 0.61])
    assert non_increasing([1.0, 1.2, 0.9]) and not non_increasing([1.0, "nan"])
    assert not non_increasing([1.0, 1.1], tolerance=0.05)


def _picks(results: list[Result], metric: str) -> dict:
    return {k: r.grid_point for k, r in select(results, metric).items()}


def test_selection_ignores_test_metrics_even_when_they_point_elsewhere():
    honest = _picks(_hand_made(), "final_train_loss")
    # Test losses that favour another member, or are all NaN: the same choice.
    lure = _picks(_hand_made(lambda seed, lr: -1.0 if lr == 0.01 else 9.0), "final_train_loss")
    nan = _picks(_hand_made(lambda seed, lr: math.nan), "final_train_loss")
    assert honest == lure == nan
    assert honest[("A", 0)] == {"learning_rate": 0.1}


def test_validation_selection_uses_the_validation_loss():
    results = [Result("A", {"learning_rate": lr}, 0, _summary(final, valid=valid))
               for lr, final, valid in [(0.1, 0.1, 0.9), (1.0, 0.5, 0.2)]]
    assert select(results, "valid_loss")[("A", 0)].grid_point == {"learning_rate": 1.0}
    assert select(results, "final_train_loss")[("A", 0)].grid_point == {"learning_rate": 0.1}


# --- real studies --------------------------------------------------------------------------
STUDY_CONFIG = """
import sys
sys.path.insert(0, {tests!r})
import runner_toy as toy
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.study import Family, Study
from meta_opt.optimizers import SGDConfig
toy.register()

def get_config():
    exp = ExperimentConfig(**{exp!r})
    families = [Family("SGD", SGDConfig(momentum=0.9), {{"learning_rate": (0.05, 0.5)}}),
                Family("SGD untuned", SGDConfig(learning_rate=0.2))]
    return Study(exp, seeds=(0, 1), families=families[:{families}])
"""


def _run_study(root: Path, families: int = 2, **exp_changes) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "study_cfg.py"
    config.write_text(STUDY_CONFIG.format(tests=str(Path(__file__).parent), families=families,
                                          exp={**EXP, **exp_changes}))
    out = root / "runs"
    assert cli.main(["run", str(config), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    return out / EXP["experiment_name"]


def test_selection_never_reads_the_test_split(tmp_path):
    """The same stochastic study with its test split replaced by NaN selects the same
    members (on the validation split, which is finite), while its test metrics are NaN."""
    clean = _run_study(tmp_path / "clean", families=1, full_batch=False)
    broken = _run_study(tmp_path / "nan", families=1, full_batch=False,
                        workload_name=toy.TOY_TASK_NAN_TEST)
    picks = {}
    for name, folder in (("clean", clean), ("nan", broken)):
        study, results, _ = load_study(folder)
        assert study.selection_metric == "valid_loss"
        picks[name] = {k: (r.grid_point, r.seed) for k, r in
                       select(results, study.selection_metric).items()}
        records = read_jsonl(Path(results[0].run_dir) / "metrics.jsonl")
        assert all(r["valid_split_id"] == toy.SPLIT_IDS["outer_valid"] for r in records)
        tested = [r["eval_loss"] for r in records]
        assert all(v == "nan" for v in tested) == (name == "nan")
    assert picks["clean"] == picks["nan"] and len(picks["clean"]) == 2  # family x seed
    # A selector reading the NaN test loss would tie everywhere and take the first point.
    assert any(point != {"learning_rate": 0.05} for point, _ in picks["clean"].values())
    report = cli.main(["report", str(broken), "--out", str(tmp_path / "report")])
    assert report == 0 and (tmp_path / "report" / "report.md").exists()  # NaN: no crash


def test_report_of_a_small_real_study(tmp_path, capsys):
    folder = _run_study(tmp_path, full_batch=True)
    capsys.readouterr()
    assert cli.main(["report", str(folder)]) == 0
    printed = capsys.readouterr().out
    text = (folder / "report" / "report.md").read_text()
    assert text in printed
    # The answer, computed here from the runs' own summaries.
    finals = {}
    for pair in folder.iterdir():
        if (pair / "study_member.json").exists():
            meta = json.loads((pair / "study_member.json").read_text())
            summary = json.loads((pair / "summary.json").read_text())
            finals[(meta["family"], meta["seed"], meta["grid_point"].get("learning_rate"))] = \
                summary["last_episode_final_loss"]
    assert len(finals) == 6  # 2 grid points x 2 seeds + 1 untuned x 2 seeds
    best = {seed: min((0.05, 0.5), key=lambda lr: finals[("SGD", seed, lr)]) for seed in (0, 1)}
    sgd_best = [finals[("SGD", s, best[s])] for s in (0, 1)]
    untuned = [finals[("SGD untuned", s, None)] for s in (0, 1)]
    rows = [line for line in text.splitlines() if line.startswith("| SGD")]
    sgd_row, untuned_row = rows[0].split(" | "), rows[1].split(" | ")
    if best[0] == best[1]:
        assert sgd_row[1] == f"learning_rate={best[0]} (all seeds)"
    else:
        assert sgd_row[1] == f"learning_rate={best[0]} (seed 0), {best[1]} (seed 1)"
    assert sgd_row[2].startswith(f"{np.median(sgd_best):.4g} [")
    assert untuned_row[1] == "- (untuned)"
    assert untuned_row[2].startswith(f"{np.median(untuned):.4g} [")
    ratios = [np.median(sgd_best), np.median(untuned)]
    assert [float(sgd_row[3]), float(untuned_row[3])] == pytest.approx(
        [r / min(ratios) for r in ratios], rel=1e-2)
    edges = sorted({"learning_rate at min" if best[s] == 0.05 else "learning_rate at max"
                    for s in (0, 1)})
    assert all(flag in sgd_row[5] for flag in edges)  # two grid points: always at an edge
    assert "| SGD | 0 |" in text and "last-episode final train loss" in text
    against = next(line for line in text.split("## Untuned families")[1].splitlines()
                   if line.startswith("| SGD untuned |")).split(" | ")
    per_seed = [u / t for u, t in zip(untuned, sgd_best, strict=True)]
    assert against[1] == ", ".join(f"{r:.3g} (seed {s})" for s, r in enumerate(per_seed))
    pngs = {p.name for p in (folder / "report").glob("*.png")}
    assert pngs == {"episode_end_loss.png", "selected_loss_curves.png", "grid_search.png"}
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in (folder / "report").glob("*.png"))
