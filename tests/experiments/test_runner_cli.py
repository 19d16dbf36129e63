"""`meta-opt run` / `meta-opt plot` end to end: files, table, plots, skip-when-complete,
--parallel, bad configs failing before compiling, and deploying a saved controller."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import runner_toy as toy

from meta_opt import cli
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.run_dir import RunDir
from meta_opt.experiments.run_pair import Interrupted, run_pair
from meta_opt.experiments.trainer import Trainer
from meta_opt.optimizers import MetaOptConfig, load_controller
from meta_opt.optimizers.config import ConfigError

EXP = dict(experiment_name="cli", workload_name=toy.TOY_TASK, seed=2, num_episodes=2,
           num_iters=8, log_every=4, checkpoint_every=4, eval_every=4, eval_batches=1,
           batch_size=16)
CONFIG = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import runner_toy as toy
from meta_opt.experiments.config import ExperimentConfig
toy.register()
from meta_opt.optimizers import MetaOptConfig

def get_config():
    exp = ExperimentConfig(**{EXP!r})
    return [(exp, toy.ToySGDConfig(momentum=0.9)),
            (exp, MetaOptConfig(H=2, HH=2, m_method="scalar", meta_learning_rate=1e-2))]
"""
REQUIRED = {"episode", "step", "global_step", "train_loss", "step_time"}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The toy sweep run once through the CLI (sequentially); shared by the tests below."""
    root = tmp_path_factory.mktemp("cli")
    config = root / "cfg.py"
    config.write_text(CONFIG)
    out = root / "runs"
    code = cli.main(["run", str(config), "--out", str(out), "--no-progress"])
    assert code == 0
    return config, out


def test_run_writes_every_file_and_prints_table_and_plots(sweep, capsys):
    config, out = sweep
    exp_dir = out / "cli"
    assert sorted(p.name for p in exp_dir.iterdir()) == ["0__ToySGD", "1_MetaOpt", "plots"]
    for name in ("0__ToySGD", "1_MetaOpt"):
        d = exp_dir / name
        cfg = json.loads((d / "config.json").read_text())
        assert ExperimentConfig.from_dict(cfg["experiment"]) == ExperimentConfig(**EXP)
        records = read_jsonl(d / "metrics.jsonl")
        # Each episode opens with a step-0 line: the loss before any update (and eval).
        assert [(r["episode"], r["step"]) for r in records] == [
            (0, 0), (0, 4), (0, 8), (1, 0), (1, 4), (1, 8)]
        assert [r["global_step"] for r in records] == [0, 4, 8, 8, 12, 16]
        assert all(REQUIRED <= set(r) for r in records if r["step"] > 0)
        assert all("eval_loss" in r and "eval_accuracy" in r for r in records)
        assert list((d / "tensorboard").rglob("events.out.tfevents.*"))
        assert sorted(int(p.name) for p in (d / "checkpoints").iterdir()) == [12, 16]
        summary = json.loads((d / "summary.json").read_text())
        assert summary["last_episode_final_loss"] == records[-1]["train_loss"]
        assert summary["first_episode_final_loss"] == records[2]["train_loss"]
        assert len(summary["episodes"]) == 2
    meta = read_jsonl(exp_dir / "1_MetaOpt" / "metrics.jsonl")[-1]
    assert {"M_0", "M_1", "grad_M_0", "gpc_cost", "total_bytes"} <= set(meta)
    assert (exp_dir / "1_MetaOpt" / "controller.npz").exists()
    assert not (exp_dir / "0__ToySGD" / "controller.npz").exists()
    assert {p.name for p in (exp_dir / "plots").glob("*.png")} >= {
        "loss.png", "final_loss_per_episode.png", "eval_accuracy.png", "metaopt_M.png"}

    # Running the same command again resumes: both pairs are complete, nothing retrains.
    before = (exp_dir / "0__ToySGD" / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli.main(["run", str(config), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    table = capsys.readouterr().out
    assert "loss@end ep1" in table and "0__ToySGD" in table and "1_MetaOpt" in table
    assert (exp_dir / "0__ToySGD" / "metrics.jsonl").read_text() == before

    plot_dir = out / "myplots"
    assert cli.main(["plot", str(exp_dir), "--out", str(plot_dir)]) == 0
    pngs = sorted(plot_dir.glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


def test_parallel_runs_match_sequential_runs(sweep, tmp_path):
    config, out = sweep
    par = tmp_path / "par"
    assert cli.main(["run", str(config), "--out", str(par), "--parallel", "2",
                     "--no-progress", "--no-plots"]) == 0
    for name in ("0__ToySGD", "1_MetaOpt"):
        strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]
        assert strip(read_jsonl(par / "cli" / name / "metrics.jsonl")) == strip(
            read_jsonl(out / "cli" / name / "metrics.jsonl"))


@pytest.mark.parametrize("args, message", [
    (["--set", "experiment.num_iter=5"], "valid keys:"),
    (["--set", "optimizer.lr=0.1"], "valid keys: learning_rate, momentum"),
    (["--set", "experiment.workload_name=Quadratc10"], "known tasks:"),
    (["--set", "experiment.batch_size=15", "--set", "experiment.num_batch_devices=2"],
     "divisible by num_batch_devices"),
    (["--set", "experiment.num_batch_devices=2", "--set", "experiment.num_opt_devices=2"],
     "= 4 devices, but 8"),
    (["--wandb"], "pip install wandb"),
])
def test_bad_configs_fail_before_compiling(sweep, tmp_path, capsys, monkeypatch, args, message):
    config, _ = sweep
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)  # as if not installed
    capsys.readouterr()
    code = cli.main(["run", str(config), "--out", str(tmp_path), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was started


def test_deploy_frozen_controller_from_run_dir(sweep, tmp_path):
    _, out = sweep
    source = out / "cli" / "1_MetaOpt"
    saved = load_controller(source / "controller.npz")
    cfg = MetaOptConfig(H=2, HH=2, m_method="scalar", initial_gpc_params=str(source),
                        freeze_gpc_params=True, base_learning_rate=0.0)
    exp = ExperimentConfig(**{**EXP, "num_episodes": 1, "experiment_name": "deploy"})
    run_pair(exp, cfg, tmp_path / "deploy", progress=False)
    records = read_jsonl(tmp_path / "deploy" / "metrics.jsonl")
    for r in records[1:]:  # frozen: the logged coefficients stay the loaded controller's
        np.testing.assert_allclose([r["M_0"], r["M_1"]], saved["M"], rtol=1e-6)
    assert records[-1]["train_loss"] < records[0]["train_loss"]  # step 0: before any update


def test_metaopt_stopped_and_resumed_matches_uninterrupted(sweep, tmp_path):
    """Restoring MetaOpt's state (controller, histories, cost-fn history) continues exactly."""
    _, out = sweep
    exp = ExperimentConfig(**EXP)
    opt = MetaOptConfig(H=2, HH=2, m_method="scalar", meta_learning_rate=1e-2)
    polls = iter(range(100))
    with pytest.raises(Interrupted) as e:  # stop after the 3rd chunk: mid-episode 1
        run_pair(exp, opt, tmp_path / "m", progress=False,
                 should_stop=lambda: next(polls) == 2)
    assert e.value.global_step == 12
    assert not (tmp_path / "m" / "summary.json").exists()
    run_pair(exp, opt, tmp_path / "m", progress=False)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]
    assert strip(read_jsonl(tmp_path / "m" / "metrics.jsonl")) == strip(
        read_jsonl(out / "cli" / "1_MetaOpt" / "metrics.jsonl"))


def test_existing_run_with_other_config_is_not_reused(sweep, capsys):
    config, out = sweep
    capsys.readouterr()
    code = cli.main(["run", str(config), "--out", str(out), "--only", "0", "--no-progress",
                     "--set", "experiment.seed=9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "different config (experiment.seed: 2 -> 9)" in err and "--restart" in err


class _FakeRay:
    """Stands in for `ray` (an optional extra, absent in CI): runs each task inline."""

    class _Ref:
        def __init__(self, value):
            self.value = value

    def __init__(self):
        self.inits, self.commands = [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)

    def remote(self, **resources):
        def wrap(fn):
            def submit(cmd):
                self.commands.append(cmd)
                return self._Ref(fn(cmd))
            return type("RemoteFn", (), {"remote": staticmethod(submit)})
        return wrap

    def wait(self, refs, num_returns=1, timeout=None):
        return refs[:num_returns], refs[num_returns:]

    def get(self, ref):
        return ref.value

    def cancel(self, ref):
        raise AssertionError("nothing to cancel in this test")


def test_ray_runs_each_pair_as_a_task_like_sequential(sweep, tmp_path, monkeypatch):
    config, out = sweep
    fake = _FakeRay()
    monkeypatch.setitem(__import__("sys").modules, "ray", fake)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", str(config), "--out", "rel", "--ray", "--only", "0",
                     "--no-progress", "--no-plots"]) == 0
    assert len(fake.inits) == 1 and len(fake.commands) == 1
    assert str(tmp_path / "rel") in fake.commands[0]  # absolute paths for remote nodes
    strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]
    name = "0__ToySGD"
    assert strip(read_jsonl(tmp_path / "rel" / "cli" / name / "metrics.jsonl")) == strip(
        read_jsonl(out / "cli" / name / "metrics.jsonl"))


def test_run_dir_in_use_is_refused_and_restart_starts_over(sweep, tmp_path):
    _, out = sweep
    exp = ExperimentConfig(**{**EXP, "num_episodes": 1})
    opt = toy.ToySGDConfig()
    rd = RunDir(tmp_path / "busy")
    with rd.lock():  # as if another process were training it
        with pytest.raises(ConfigError, match="being trained by another process"):
            run_pair(exp, opt, rd.path, progress=False)
    run_pair(exp, opt, rd.path, progress=False)
    other = exp.replace(seed=5)
    with pytest.raises(ConfigError, match="different config"):
        run_pair(other, opt, rd.path, progress=False)
    summary = run_pair(other, opt, rd.path, progress=False, restart=True)
    assert json.loads((rd.path / "config.json").read_text())["experiment"]["seed"] == 5
    assert summary == json.loads((rd.path / "summary.json").read_text())
    assert len(read_jsonl(rd.path / "metrics.jsonl")) == 3  # step 0, 4, 8


def test_wandb_logs_every_metrics_line(sweep, tmp_path, monkeypatch):
    """--wandb with a stand-in `wandb` module (not a dependency): same records, same steps."""
    logged, inits = [], []

    class Run:
        def log(self, data, step):
            logged.append((step, data))

        def finish(self):
            logged.append("finished")

    fake = type("FakeWandb", (), {"init": staticmethod(lambda **kw: inits.append(kw) or Run())})
    monkeypatch.setitem(__import__("sys").modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    config, _ = sweep
    assert cli.main(["run", str(config), "--out", str(tmp_path), "--only", "0", "--wandb",
                     "--no-progress", "--no-plots"]) == 0
    records = read_jsonl(tmp_path / "cli" / "0__ToySGD" / "metrics.jsonl")
    assert inits[0]["mode"] == "offline" and inits[0]["name"] == "0__ToySGD"
    assert logged[-1] == "finished"
    assert [s for s, _ in logged[:-1]] == [r["global_step"] for r in records]
    pairs = zip(logged[:-1], records, strict=True)
    assert all(d["train_loss"] == r["train_loss"] for (_, d), r in pairs)


def test_nonfinite_and_missing_values_are_kept_visible(tmp_path):
    from meta_opt.experiments.metrics import MetricsWriter
    from meta_opt.experiments.run_command import format_table

    writer = MetricsWriter(tmp_path, tensorboard=False)
    writer.write({"episode": 0, "step": 2, "global_step": 2, "train_loss": float("nan"),
                  "eval_loss": float("inf")})
    writer.close()
    (record,) = read_jsonl(tmp_path / "metrics.jsonl")  # valid JSON, values still visible
    assert record["train_loss"] == "nan" and record["eval_loss"] == "inf"
    table = format_table([("0_SGD", {"settings": "learning_rate=10", "steps_per_sec": 5.0,
                                     "first_episode_final_loss": "nan",
                                     "last_episode_final_loss": None})])
    row = table.splitlines()[-1].split()
    assert row == ["0_SGD", "learning_rate=10", "nan", "-", "-", "5", "-"]


def _events(folder: Path):
    """Every Event in the TensorBoard files under `folder` (TFRecord framing, parsed with
    the protobufs tensorboardX ships: no TensorBoard install needed)."""
    import struct

    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            out.append((path.parent, event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])))
            pos += 12 + length + 4
    return out


def test_tensorboard_groups_scalars_names_runs_and_records_hparams(sweep):
    from tensorboardX.proto import plugin_hparams_pb2

    _, out = sweep
    pair = out / "cli" / "1_MetaOpt"
    events = _events(pair / "tensorboard")
    folders = {folder.name for folder, _ in events}
    assert folders == {"1_MetaOpt (H=2, HH=2, meta_learning_rate=0.01)"}  # what TB shows
    scalars = {}
    for _, e in events:
        for v in e.summary.value:
            if v.HasField("simple_value"):
                scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    assert {"train/loss", "train/loss_mean", "train/accuracy", "eval/loss", "eval/accuracy",
            "time/step_time", "metaopt/M_0", "metaopt/gpc_cost"} <= set(scalars)
    assert {tag.split("/")[0] for tag in scalars} == {"train", "eval", "time", "metaopt"}
    assert not {"episode", "step", "global_step"} & {t.split("/")[-1] for t in scalars}
    records = read_jsonl(pair / "metrics.jsonl")
    assert [s for s, _ in scalars["train/loss"]] == [r["global_step"] for r in records]
    np.testing.assert_allclose([v for _, v in scalars["train/loss"]],
                               [r["train_loss"] for r in records], rtol=1e-6)
    plugin = [v.metadata.plugin_data for _, e in events for v in e.summary.value
              if v.tag == "_hparams_/session_start_info"]
    assert len(plugin) == 1 and plugin[0].plugin_name == "hparams"
    start = plugin_hparams_pb2.HParamsPluginData.FromString(plugin[0].content)
    hparams = start.session_start_info.hparams
    assert hparams["optimizer"].string_value == "MetaOpt"
    assert hparams["optimizer.H"].number_value == 2
    assert hparams["optimizer.meta_learning_rate"].number_value == pytest.approx(0.01)
    assert hparams["experiment.seed"].number_value == EXP["seed"]
    assert hparams["experiment.workload_name"].string_value == toy.TOY_TASK


def test_each_episode_opens_with_the_loss_before_any_update(sweep):
    """The step-0 line: the loss and evaluation of the episode's fresh params, on the batch
    of step 0, computed here from the task directly."""
    _, out = sweep
    exp = ExperimentConfig(**EXP)
    trainer = Trainer(exp, toy.ToySGDConfig(momentum=0.9))
    records = read_jsonl(out / "cli" / "0__ToySGD" / "metrics.jsonl")
    task = trainer.task
    for episode in range(exp.num_episodes):
        (line,) = [r for r in records if (r["episode"], r["step"]) == (episode, 0)]
        assert line["global_step"] == episode * exp.num_iters
        params, state = task.init_with_state(Trainer.episode_init_key(trainer.rng, episode))
        start = trainer.init().replace(episode=jnp.int32(episode))
        loss, _, aux = task.loss_with_state_and_aux(params, state, None,
                                                    trainer.train_batch(start))
        np.testing.assert_allclose(line["train_loss"], float(loss), rtol=1e-6)
        np.testing.assert_allclose(line["train_accuracy"], float(aux["accuracy"]), rtol=1e-6)
        batch = trainer.eval_batch(0)
        eval_loss = task.loss_with_state_and_aux(params, state, None, batch)[0]
        np.testing.assert_allclose(line["eval_loss"], float(eval_loss), rtol=1e-6)
        first_chunk = [r for r in records if r["episode"] == episode and r["step"] > 0][0]
        assert first_chunk["train_loss"] < line["train_loss"]  # training started from it


def test_a_run_dir_from_before_a_new_config_field_is_still_the_same_pair(sweep, tmp_path):
    """config.json written before `valid_split` existed: the field takes its default, the
    run is recognised as the same pair (complete: skipped), not refused as different."""
    import shutil

    config, out = sweep
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    path = copy / "cli" / "0__ToySGD" / "config.json"
    stored = json.loads(path.read_text())
    del stored["experiment"]["valid_split"]
    path.write_text(json.dumps(stored))
    before = (copy / "cli" / "0__ToySGD" / "metrics.jsonl").read_text()
    assert cli.main(["run", str(config), "--out", str(copy), "--only", "0", "--no-progress",
                     "--no-plots"]) == 0
    assert (copy / "cli" / "0__ToySGD" / "metrics.jsonl").read_text() == before
