"""`meta-opt meta-train` (exact resume, outputs, config errors) and `meta-opt eval-lopt`."""

import json

import jax
import numpy as np
import pytest

from meta_opt.cli import main as cli_main
from meta_opt.learned import LearnableAdam
from meta_opt.outer.checkpoint import MetaTrainCheckpointer
from meta_opt.outer.meta_train_config import MetaTrainConfig

CONFIG = """
def get_config():
    return {
        "name": "tiny", "learned_optimizer": "LearnableAdam", "estimator": "TruncatedPES",
        "task_families": ["FixedDimQuadraticFamily4"], "num_tasks": 2, "trunc_length": 3,
        "std": 0.05, "min_length": 5, "max_length": 9, "meta_loss_split": None,
        "theta_lr": 0.01, "num_steps": 6, "log_every": 1, "checkpoint_every": 3,
    }
"""


def _theta(run_dir):
    ckpt = MetaTrainCheckpointer(run_dir / "checkpoints")
    theta, meta = ckpt.restore_theta(LearnableAdam().init(jax.random.PRNGKey(0)))
    ckpt.close()
    return theta, meta


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("meta_train")
    config = root / "tiny.py"
    config.write_text(CONFIG)
    full, split = root / "full", root / "split"
    assert cli_main(["meta-train", str(config), "--out", str(full)]) == 0
    # Interrupted after 3 steps, then resumed to 6: must end bit-identical to `full`.
    assert cli_main(["meta-train", str(config), "--out", str(split), "--set", "num_steps=3"]) == 0
    assert cli_main(["meta-train", str(config), "--out", str(split), "--no-plot"]) == 0
    return config, full, split


def test_resumed_meta_training_matches_uninterrupted_run_exactly(runs):
    _, full, split = runs
    (theta_a, meta_a), (theta_b, meta_b) = _theta(full), _theta(split)
    assert meta_a["step"] == meta_b["step"] == 6
    jax.tree_util.tree_map(np.testing.assert_array_equal, theta_a, theta_b)
    lines_a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    lines_b = [json.loads(x) for x in (split / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines_b] == [1, 2, 3, 4, 5, 6]
    assert [x["meta_loss"] for x in lines_a] == [x["meta_loss"] for x in lines_b]


def test_meta_train_writes_its_outputs(runs):
    _, full, _ = runs
    for name in ("config.json", "metrics.jsonl", "summary.json", "meta_loss.png"):
        assert (full / name).is_file(), name
    assert any((full / "tensorboard").iterdir())
    assert MetaTrainConfig.from_dict(json.loads((full / "config.json").read_text())).name == "tiny"


def test_eval_lopt_compares_with_adam(runs, capsys):
    _, full, _ = runs
    args = ["eval-lopt", str(full), "--task", "Quadratic4", "--steps", "20", "--eval-every", "10"]
    assert cli_main(args + ["--adam-lr", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "LearnableAdam@6" in out and "Adam(lr=0.1)" in out
    result = json.loads((full / "eval_Quadratic4.json").read_text())
    assert len(result["Adam(lr=0.1)"]["eval/test/loss"]) == 2


def test_config_errors_name_the_bad_value(runs, capsys):
    config, _, _ = runs
    assert cli_main(["meta-train", str(config), "--set", "estimator=PES"]) == 2
    assert "unknown estimator 'PES'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown meta-train config key"):
        MetaTrainConfig.from_dict({"nme": "x"})


def test_sigint_checkpoints_the_current_step_and_resume_stays_exact(runs, monkeypatch, tmp_path):
    import os
    import signal

    from meta_opt.outer.gradient_learner import SingleMachineGradientLearner

    config, full, _ = runs
    original, calls = SingleMachineGradientLearner.update, []

    def update_then_interrupt(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)  # handled: the step finishes, then stop
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SingleMachineGradientLearner, "update", update_then_interrupt)
    out = tmp_path / "interrupted"
    assert cli_main(["meta-train", str(config), "--out", str(out), "--no-plot"]) == 130
    assert _theta(out)[1]["step"] == 2
    monkeypatch.setattr(SingleMachineGradientLearner, "update", original)
    assert cli_main(["meta-train", str(config), "--out", str(out), "--no-plot"]) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, _theta(out)[0], _theta(full)[0])
