"""`meta-opt meta-train` (exact resume, outputs, config errors) and `meta-opt eval-lopt`."""

import json
import os
import signal

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
    assert "[1/2] LearnableAdam@6: done in" in out and "ETA" in out
    png = (full / "eval_Quadratic4.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000  # a real plot, not a stub


def test_config_errors_name_the_bad_value(runs, capsys):
    config, _, _ = runs
    assert cli_main(["meta-train", str(config), "--set", "estimator=PES"]) == 2
    assert "unknown estimator 'PES'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown meta-train config key"):
        MetaTrainConfig.from_dict({"nme": "x"})


class _SignalOnRead:
    """A loss whose reading sends SIGINT: the window in which the jitted step's work
    completes (the step returned before its work was done)."""

    def __init__(self, loss):
        self.loss = loss

    def __float__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return float(self.loss)


@pytest.mark.parametrize("point", ["inside_update", "while_loss_is_read"])
def test_sigint_checkpoints_the_step_it_reports_and_resume_stays_exact(
    runs, monkeypatch, tmp_path, capsys, point
):
    from meta_opt.outer.gradient_learner import SingleMachineGradientLearner

    config, full, _ = runs
    original, calls = SingleMachineGradientLearner.update, []

    def update_with_signal(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2 and point == "inside_update":
            os.kill(os.getpid(), signal.SIGINT)  # handled: the step finishes, then stop
        state, loss, metrics = original(self, *args, **kwargs)
        if len(calls) == 2 and point == "while_loss_is_read":
            loss = _SignalOnRead(loss)
        return state, loss, metrics

    monkeypatch.setattr(SingleMachineGradientLearner, "update", update_with_signal)
    out = tmp_path / "interrupted"
    capsys.readouterr()
    assert cli_main(["meta-train", str(config), "--out", str(out), "--no-plot"]) == 130
    err = capsys.readouterr().err
    ckpt = MetaTrainCheckpointer(out / "checkpoints")
    assert ckpt.latest_step() == 2  # checkpoint_every is 3: this save is the stop's
    ckpt.close()
    assert "stopped by SIGINT at meta-step 2; its checkpoint is saved" in err
    assert json.loads((out / "summary.json").read_text())["checkpoint_step"] == 2
    monkeypatch.setattr(SingleMachineGradientLearner, "update", original)
    assert cli_main(["meta-train", str(config), "--out", str(out), "--no-plot"]) == 0
    jax.tree_util.tree_map(np.testing.assert_array_equal, _theta(out)[0], _theta(full)[0])


def test_a_second_process_cannot_train_a_locked_run_directory(runs, tmp_path, capsys):
    from meta_opt.experiments.run_dir import RunDir

    config, _, _ = runs
    out = tmp_path / "locked"
    with RunDir(out).lock():  # another holder of `meta-opt run`'s lock
        assert cli_main(["meta-train", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is being trained by another process (pid {os.getpid()})" in err
    assert not (out / "config.json").exists()  # refused before writing anything


def _copy_run(src, dst):
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_exactly(runs, tmp_path, capsys):
    config, full, _ = runs
    out = _copy_run(full, tmp_path / "damaged")
    for f in (out / "checkpoints" / "6").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    capsys.readouterr()
    assert cli_main(["meta-train", str(config), "--out", str(out), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert "checkpoint of meta-step 6" in err and "resuming from meta-step 3" in err
    jax.tree_util.tree_map(np.testing.assert_array_equal, _theta(out)[0], _theta(full)[0])
    assert [x.name.startswith("damaged_6_") for x in (out / "checkpoints").iterdir()].count(True)


def test_resume_refuses_checkpoints_of_another_config_when_config_json_is_gone(
    runs, tmp_path, capsys
):
    config, full, _ = runs
    out = _copy_run(full, tmp_path / "no_config")
    (out / "config.json").unlink()
    args = [
        "meta-train",
        str(config),
        "--out",
        str(out),
        "--set",
        "std=0.07",
        "--set",
        "num_steps=8",
    ]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of a different config (std: 0.05 -> 0.07)" in err


def test_resume_refuses_a_metrics_file_that_lost_lines(runs, tmp_path, capsys):
    config, full, _ = runs
    out = _copy_run(full, tmp_path / "cut")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join(lines[:2]))  # cut mid-file: 6 lines -> 2
    assert cli_main(["meta-train", str(config), "--out", str(out), "--set", "num_steps=8"]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl holds 2 lines up to meta-step 6, but the checkpoint recorded 6" in err


def _user_error_cases(tmp_path, config):
    bad_syntax = tmp_path / "syntax.py"
    bad_syntax.write_text("def get_config(:\n")
    raising = tmp_path / "raising.py"
    raising.write_text("def get_config():\n    return 1 / 0\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    damaged = tmp_path / "damaged_json"
    damaged.mkdir()
    (damaged / "config.json").write_text("{not json")
    other = tmp_path / "other_run"
    other.mkdir()
    other_config = MetaTrainConfig.from_dict(
        dict(json.loads((tmp_path / "ref.json").read_text()), trunc_length=4)
    )
    (other / "config.json").write_text(json.dumps(other_config.to_dict()))
    out = ["--out", str(tmp_path / "fresh")]
    return [
        (
            [str(tmp_path / "nope.py")],
            "config file " + str(tmp_path / "nope.py") + " does not exist",
        ),
        ([str(bad_syntax)], f"{bad_syntax}, line 1: syntax error"),
        ([str(raising)], f"{raising}: running it raised ZeroDivisionError: division by zero"),
        ([config, "--set", "std=abc", *out], "std must be a number, got 'abc' (str)"),
        ([config, "--set", "num_tasks=2.5", *out], "num_tasks must be an integer, got 2.5"),
        ([config, "--set", "task_families=Nope", *out], "unknown task family 'Nope'"),
        (
            [config, "--set", 'lopt_kwargs={"bogus": 1}', *out],
            "lopt_kwargs ['bogus'] are not arguments of LearnableAdam",
        ),
        ([config, "--out", str(a_file / "sub")], "choose a writable --out"),
        ([config, "--out", str(damaged)], "config.json cannot be read"),
        (
            [config, "--out", str(other)],
            "holds a different meta-training run (trunc_length: 4 -> 3)",
        ),
        ([config, "--workers", "2", *out], "--workers and --max-staleness need --ray"),
    ]


def test_user_errors_are_one_or_two_lines_exit_2_and_name_the_value(runs, tmp_path, capsys):
    config, full, _ = runs
    (tmp_path / "ref.json").write_text((full / "config.json").read_text())
    for args, message in _user_error_cases(tmp_path, str(config)):
        capsys.readouterr()
        assert cli_main(["meta-train", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert not (tmp_path / "fresh").exists()  # every refusal came before anything was written


def test_wandb_without_the_package_is_refused_before_any_work(runs, tmp_path, capsys, monkeypatch):
    import sys

    config, _, _ = runs
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    out = tmp_path / "no_wandb"
    assert cli_main(["meta-train", str(config), "--out", str(out), "--wandb"]) == 2
    assert "--wandb needs the wandb package" in capsys.readouterr().err
    assert not out.exists()


def test_debug_shows_the_traceback(runs):
    from meta_opt.experiments.command_errors import CommandError

    config, _, _ = runs
    with pytest.raises(CommandError, match="std must be a number"):
        cli_main(["meta-train", str(config), "--set", "std=abc", "--debug"])


def test_eval_lopt_user_errors(runs, tmp_path, capsys):
    _, full, _ = runs
    cases = [
        ([str(tmp_path), "--task", "Quadratic4"], "is not a meta-train run directory"),
        ([str(full), "--task", "Quadratc4"], "unknown task 'Quadratc4' (did you mean"),
        ([str(full), "--task", "Quadratic4", "--steps", "25"], "must be a positive multiple"),
        ([str(full), "--task", "Quadratic4", "--adam-lr", "-1"], "--adam-lr must be > 0, got -1"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert cli_main(["eval-lopt", *args]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.splitlines()) <= 2, err


def test_eval_lopt_loss_format_keeps_tiny_losses_distinct():
    from meta_opt.experiments.eval_lopt_command import format_loss

    assert (format_loss(9.7e-8), format_loss(7.2e-5)) == ("9.700e-08", "7.200e-05")
    assert (format_loss(0.19141), format_loss(0.67)) == ("0.1914", "0.6700")


FAKE_WANDB = '''
"""Stand-in for wandb (not a dependency): appends every call to $FAKE_WANDB_LOG."""
import json, os


def _log(entry):
    with open(os.environ["FAKE_WANDB_LOG"], "a") as f:
        f.write(json.dumps(entry) + "\\n")


class _Run:
    def log(self, data, step):
        _log({"log": data, "step": step})

    def finish(self):
        _log({"finish": True})


def init(**kwargs):
    _log({"init": {k: v for k, v in kwargs.items() if k != "config"}})
    return _Run()
'''


def test_piped_meta_train_prints_progress_lines_and_logs_to_wandb(runs, tmp_path):
    """A subprocess with stdout to a pipe (not a terminal): plain progress lines with
    meta-step, meta-loss and ETA; --wandb (with a stand-in module) gets every metrics line."""
    import subprocess
    import sys

    config, _, _ = runs
    (tmp_path / "wandb.py").write_text(FAKE_WANDB)
    log = tmp_path / "wandb_calls.jsonl"
    env = dict(os.environ, PYTHONPATH=str(tmp_path), FAKE_WANDB_LOG=str(log), WANDB_MODE="offline")
    out = tmp_path / "piped"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "meta_opt.cli",
            "meta-train",
            str(config),
            "--out",
            str(out),
            "--no-plot",
            "--wandb",
            "--set",
            "log_every=2",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"tiny: meta-steps 1..6 into {out} (the first one compiles)"
    progress = [ln for ln in lines if ln.startswith("tiny: meta-step ")]
    assert [ln.split()[2] for ln in progress] == ["1/6", "2/6", "4/6", "6/6"]
    assert all("meta-loss " in ln and " ETA " in ln for ln in progress)
    assert progress[-1].endswith("ETA 0s") and "\r" not in proc.stdout  # no bar off a tty
    assert lines[-1].startswith("meta-trained tiny for 6 steps")
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    assert calls[0]["init"]["name"] == "tiny" and calls[0]["init"]["mode"] == "offline"
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [c for c in calls if "log" in c]
    assert [c["step"] for c in logged] == [r["step"] for r in records] == [2, 4, 6]
    assert [c["log"]["meta_loss"] for c in logged] == [r["meta_loss"] for r in records]
    assert calls[-1] == {"finish": True}


def test_eval_lopt_trains_a_task_whose_data_are_python_iterators(runs, monkeypatch, capsys):
    from meta_opt.tasks import registry

    from ._toy import IteratorTask

    _, full, _ = runs
    monkeypatch.setitem(registry._EXACT, "IteratorQuadratic", lambda **kwargs: IteratorTask())
    args = ["eval-lopt", str(full), "--task", "IteratorQuadratic", "--steps", "4"]
    assert cli_main(args + ["--eval-every", "2", "--no-plot", "--no-progress"]) == 0
    result = json.loads((full / "eval_IteratorQuadratic.json").read_text())
    # x0 = 0 and every train batch is 1: the first loss is 8 * (0 - 1)^2 for any optimizer.
    assert result["Adam(lr=0.001)"]["train/loss"][0] == pytest.approx(8.0)
    assert len(result["LearnableAdam@6"]["eval/test/loss"]) == 2


def test_missing_data_is_two_lines_naming_the_dataset_and_what_to_do(
    runs, tmp_path, monkeypatch, capsys
):
    import meta_opt.data.cache

    def offline(spec, folder, *args, **kwargs):
        raise OSError("no network in this test")

    config, full, _ = runs
    monkeypatch.setattr(meta_opt.data.cache, "download", offline)
    monkeypatch.setenv("META_OPT_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    family = "task_families=ImageMLPFamily_FashionMnist8_8"
    assert cli_main(["meta-train", str(config), "--out", str(tmp_path / "r"), "--set", family]) == 2
    err = capsys.readouterr().err
    assert (
        "task family ImageMLPFamily_FashionMnist8_8: dataset 'fashion_mnist': missing files" in err
    )
    assert "meta-opt data fetch fashion_mnist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2, err
    assert cli_main(["eval-lopt", str(full), "--task", "ImageMLP_FashionMnist8_Relu32"]) == 2
    err = capsys.readouterr().err
    assert "--task ImageMLP_FashionMnist8_Relu32: dataset 'fashion_mnist': missing files" in err
    assert len(err.strip().splitlines()) == 2, err
