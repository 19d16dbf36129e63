"""The shipped config files load and validate, and the built-in default sweep runs
(shortened with --set, two of its pairs) writing every file, the table and the plots."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from meta_opt import cli
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.default_sweep import get_config as default_sweep
from meta_opt.experiments.grouping import plan_groups
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.sweep import load_sweep, read_sweep
from meta_opt.optimizers import MetaOptConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


STUDIES = sorted(p.name for p in (CONFIGS / "studies").glob("*.py"))


@pytest.mark.parametrize("name", ["default.py", "quick_comparison.py",
                                  "mnist_fullbatch_episodes.py", "sgd_lr_sweep.py"])
def test_shipped_configs_load(name):
    pairs = load_sweep(CONFIGS / name)
    assert pairs and all(isinstance(e, ExperimentConfig) for e, _ in pairs)
    names = [o.registered_name() for _, o in pairs]
    if name == "mnist_fullbatch_episodes.py":
        assert pairs[0][0].num_episodes >= 10 and pairs[0][0].full_batch
        assert "MetaOpt" in names and "SGD" in names
    if name == "sgd_lr_sweep.py":
        assert set(names) == {"SGD"}
        assert len({o.learning_rate for _, o in pairs}) >= 4
        assert len(plan_groups(pairs, list(range(len(pairs))))) == 2  # momentum 0 and 0.9
    if name == "quick_comparison.py":
        assert names == ["MetaOpt", "MetaOpt", "SGD", "SGD", "AdamW", "DoG"]


def test_every_workload_has_a_full_batch_and_a_stochastic_study():
    assert len(STUDIES) == 8
    workloads = set()
    for name in STUDIES:
        study = read_sweep(CONFIGS / "studies" / name).study
        exp = study.experiment
        assert study is not None and study.seeds == (0, 1, 2) and exp.num_episodes >= 5
        assert exp.full_batch == name.endswith("_fullbatch.py")
        assert study.selection_metric == ("final_train_loss" if exp.full_batch
                                          else "valid_loss")
        assert exp.full_batch or exp.batch_size == 128
        tuned = {f.name: f for f in study.families if f.tuned}
        assert set(tuned) == {"SGD", "Momentum 0.9", "AdamW"}
        for family in tuned.values():
            rates = [p["learning_rate"] for p in family.points()]
            assert len(rates) >= 5  # half-decade steps: each rate ~3.16x the last
            assert all(b / a == pytest.approx(10 ** 0.5, rel=1e-5)
                       for a, b in itertools.pairwise(rates))
        untuned = {f.name: f.optimizer for f in study.families if not f.tuned}
        assert untuned["MetaOpt scalar"] == MetaOptConfig()  # the library default, untuned
        assert untuned["MetaOpt diagonal"] == MetaOptConfig(m_method="diagonal")
        assert {"DoG", "DoWG", "Prodigy", "Mechanic", "DAdaptAdamW"} <= set(untuned)
        workloads.add(exp.workload_name)
    assert workloads == {"ImageMLP_Digits8_Relu32", "ImageMLP_Mnist28_Relu128x128",
                         "Conv_Mnist28_Relu32x64", "ByteLM_1L32D32S"}


def test_default_sweep_is_the_tuned_digits_comparison():
    study = default_sweep()
    exp = study.experiment
    assert exp.workload_name == "ImageMLP_Digits8_Relu32" and exp.full_batch
    assert (exp.num_episodes, exp.num_iters) == (5, 300)
    families = {f.name: f for f in study.families}
    assert {"SGD", "Momentum 0.9", "AdamW", "MetaOpt scalar", "MetaOpt diagonal",
            "DoG"} == set(families)
    assert all(len(families[n].points()) == 5 for n in ("SGD", "Momentum 0.9", "AdamW"))
    assert families["MetaOpt scalar"].optimizer == MetaOptConfig()
    assert families["MetaOpt diagonal"].optimizer.m_method == "diagonal"


def test_default_run_writes_every_file_and_the_studys_table(tmp_path, capsys):
    short = ["--set", "experiment.num_episodes=2", "--set", "experiment.num_iters=20",
             "--set", "experiment.log_every=10", "--set", "experiment.eval_every=10",
             "--set", "experiment.checkpoint_every=10"]
    code = cli.main(["run", "--out", str(tmp_path), "--only", "15,2", "--no-progress", *short])
    assert code == 0
    out = capsys.readouterr().out
    assert "15_MetaOpt" in out and "2_SGD" in out
    assert "| MetaOpt scalar | - (untuned) |" in out and "2 of 18 runs complete" in out
    exp_dir = tmp_path / "default"
    for name in ("15_MetaOpt", "2_SGD"):
        d = exp_dir / name
        for f in ("config.json", "metrics.jsonl", "summary.json"):
            assert (d / f).is_file(), f
        assert list((d / "tensorboard").iterdir()) and list((d / "checkpoints").iterdir())
        records = read_jsonl(d / "metrics.jsonl")
        assert len(records) == 6 and "eval_accuracy" in records[-1]  # 2 x (step 0 + 2 chunks)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["last_episode_final_loss"] < 2.3  # below chance (log 10) for 10 classes
    assert (exp_dir / "15_MetaOpt" / "controller.npz").is_file()
    assert (exp_dir / "report" / "report.md").is_file()
    assert len(list((exp_dir / "report").glob("*.png"))) >= 3
