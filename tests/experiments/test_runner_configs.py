"""The shipped config files load and validate, and the built-in default sweep runs
(shortened with --set, two of its pairs) writing every file, the table and the plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meta_opt import cli
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.default_sweep import get_config as default_sweep
from meta_opt.experiments.grouping import plan_groups
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.sweep import load_sweep, read_sweep

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["default.py", "mnist_fullbatch_episodes.py",
                                  "sgd_lr_sweep.py", "digits_study.py"])
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
    if name == "digits_study.py":
        study = read_sweep(CONFIGS / name).study
        assert study is not None and len(study.seeds) == 3
        tuned = [f for f in study.families if f.tuned]
        assert {f.name for f in tuned} == {"SGD", "Momentum 0.9", "AdamW"}
        assert all(len(f.points()) >= 5 for f in tuned)
        assert len(plan_groups(pairs, list(range(len(pairs))))) == len(study.families)


def test_default_sweep_is_the_documented_comparison():
    pairs = default_sweep()
    exp = pairs[0][0]
    assert exp.workload_name == "ImageMLP_Digits8_Relu32" and exp.num_episodes == 3
    names = [o.registered_name() for _, o in pairs]
    assert names.count("MetaOpt") == 2 and {"SGD", "AdamW", "DoG"} <= set(names)
    assert {o.m_method for _, o in pairs if o.registered_name() == "MetaOpt"} == {
        "scalar", "diagonal"}
    assert any(o.registered_name() == "SGD" and o.momentum > 0 for _, o in pairs)


def test_default_run_writes_every_file(tmp_path, capsys):
    short = ["--set", "experiment.num_episodes=2", "--set", "experiment.num_iters=20",
             "--set", "experiment.log_every=10", "--set", "experiment.eval_every=10",
             "--set", "experiment.checkpoint_every=10"]
    code = cli.main(["run", "--out", str(tmp_path), "--only", "0,2", "--no-progress", *short])
    assert code == 0
    out = capsys.readouterr().out
    assert "0_MetaOpt" in out and "2_SGD" in out and "plots:" in out
    exp_dir = tmp_path / "default"
    for name in ("0_MetaOpt", "2_SGD"):
        d = exp_dir / name
        for f in ("config.json", "metrics.jsonl", "summary.json"):
            assert (d / f).is_file(), f
        assert list((d / "tensorboard").iterdir()) and list((d / "checkpoints").iterdir())
        records = read_jsonl(d / "metrics.jsonl")
        assert len(records) == 6 and "eval_accuracy" in records[-1]  # 2 x (step 0 + 2 chunks)
        summary = json.loads((d / "summary.json").read_text())
        assert summary["last_episode_final_loss"] < 2.3  # below chance (log 10) for 10 classes
    assert (exp_dir / "0_MetaOpt" / "controller.npz").is_file()
    assert len(list((exp_dir / "plots").glob("*.png"))) == 4
