"""Fault injection: every way a run directory gets damaged, or a user gets something wrong,
ends in an exact recovery or a clear refusal (exit 2, one or two lines naming the file).

The four faults that used to end silently with exit 0 and wrong results come first:
metrics.jsonl cut before the checkpoint, a stale controller.npz, a deleted config.json
letting another config resume, TensorBoard events lost by a kill. "Exact" means what an
uninterrupted run of the same pair holds: metrics.jsonl (step times aside), the final
checkpoint's arrays, summary.json's results and controller.npz.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import runner_toy as toy

from meta_opt import cli
from meta_opt.experiments.checkpoints import Checkpointer
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.run_pair import Interrupted, run_pair
from meta_opt.optimizers import MetaOptConfig, load_controller

REPO = Path(__file__).resolve().parents[2]
EXP = dict(experiment_name="fault", workload_name=toy.TOY_TASK, seed=1, num_episodes=2,
           num_iters=8, log_every=4, checkpoint_every=4, eval_every=4, eval_batches=1,
           batch_size=16, keep_checkpoints=3)
SGD = dict(learning_rate=0.5, momentum=0.9)
METAOPT = dict(H=2, HH=2, m_method="scalar", meta_learning_rate=1e-2)
CONFIG = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import runner_toy as toy
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.optimizers import MetaOptConfig
toy.register()

def get_config():
    exp = ExperimentConfig(**{{**{EXP!r}, **EXTRA}})
    return [(exp, toy.ToySGDConfig(**{SGD!r})), (exp, MetaOptConfig(**{METAOPT!r}))]

EXTRA = {{}}
"""
PAIRS = ("0__ToySGD", "1_MetaOpt")


def _pair(index: int):
    exp = ExperimentConfig(**EXP)
    return exp, (toy.ToySGDConfig(**SGD) if index == 0 else MetaOptConfig(**METAOPT))


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
    """The config file, and both pairs run uninterrupted (the exact results)."""
    root = tmp_path_factory.mktemp("fault")
    config = root / "cfg.py"
    config.write_text(CONFIG)
    out = root / "ref"
    assert cli.main(["run", str(config), "--out", str(out), "--no-progress", "--no-plots"]) == 0
    return config, out / "fault"


def _run(config: Path, out: Path, capsys, *args: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["run", str(config), "--out", str(out), "--no-progress", "--no-plots",
                     *args])
    return code, capsys.readouterr().err


def _short(err: str) -> bool:
    """One or two lines, no traceback."""
    return "Traceback" not in err and len([ln for ln in err.splitlines() if ln.strip()]) <= 2


def _interrupted(out: Path, index: int, chunks: int) -> Path:
    """Pair `index` trained for `chunks` chunks in out/fault/<pair>, then stopped (each
    chunk of 4 steps is checkpointed: global steps 4, 8, 12, ...)."""
    polls = iter(range(1000))
    run_dir = out / "fault" / PAIRS[index]
    with pytest.raises(Interrupted):
        run_pair(*_pair(index), run_dir, progress=False,
                 should_stop=lambda: next(polls) == chunks - 1)
    return run_dir


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


def _results(summary: dict) -> dict:
    keys = ("first_episode_final_loss", "last_episode_final_loss", "best_eval_accuracy",
            "episodes", "nonfinite", "settings")
    return {k: summary.get(k) for k in keys}


def _assert_exact(got: Path, want: Path) -> None:
    strip = lambda rs: [{k: v for k, v in r.items() if k != "step_time"} for r in rs]
    assert strip(read_jsonl(got / "metrics.jsonl")) == strip(read_jsonl(want / "metrics.jsonl"))
    summary = json.loads((got / "summary.json").read_text())
    assert _results(summary) == _results(json.loads((want / "summary.json").read_text()))
    a, _ = Checkpointer(got / "checkpoints").restore_raw()
    b, _ = Checkpointer(want / "checkpoints").restore_raw()
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    if (want / "controller.npz").exists():
        np.testing.assert_array_equal(load_controller(got)["M"], load_controller(want)["M"])


# --- the four silent faults ------------------------------------------------------------------
def test_metrics_cut_before_the_checkpoint_is_refused_not_resumed(ref, tmp_path, capsys):
    config, _ = ref
    run_dir = _interrupted(tmp_path, 0, chunks=3)  # checkpointed at global step 12
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(lines[:2]))  # cut mid-file
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 2 and _short(err), err
    assert f"{run_dir / 'metrics.jsonl'} holds 2 lines" in err and "lost lines" in err
    assert "--restart" in err and not (run_dir / "summary.json").exists()


def test_metrics_cut_in_a_complete_run_is_refused_not_tabled(ref, tmp_path, capsys):
    config, ref_dir = ref
    run_dir = _copy(ref_dir / PAIRS[0], tmp_path / "fault" / PAIRS[0])
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run_dir / "metrics.jsonl").write_text("".join(lines[:2] + lines[3:]))
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 2 and _short(err), err
    assert "metrics.jsonl holds 5 lines, but the run recorded 6" in err


META_TRAIN = """
def get_config():
    return {
        "name": "tiny", "learned_optimizer": "LearnableAdam", "estimator": "TruncatedPES",
        "task_families": ["FixedDimQuadraticFamily4"], "num_tasks": 2, "trunc_length": 3,
        "std": 0.05, "min_length": 5, "max_length": 9, "meta_loss_split": None,
        "theta_lr": 0.01, "num_steps": 3, "log_every": 1, "checkpoint_every": 3,
    }
"""


def test_meta_train_metrics_with_a_changed_line_are_refused(tmp_path, capsys):
    config, out = tmp_path / "tiny.py", tmp_path / "meta"
    config.write_text(META_TRAIN)
    assert cli.main(["meta-train", str(config), "--out", str(out), "--no-plot",
                     "--no-progress"]) == 0
    metrics = out / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    records[1]["meta_loss"] *= 2  # as many lines as recorded, one of them not the same
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    capsys.readouterr()
    assert cli.main(["meta-train", str(config), "--out", str(out), "--no-plot",
                     "--no-progress", "--set", "num_steps=6"]) == 2
    err = capsys.readouterr().err
    assert f"{metrics}: its first 3 lines are not the ones the checkpoint" in err, err
    assert "was changed" in err and _short(err)


@pytest.mark.parametrize("summary_kept", [False, True], ids=["killed_before_summary",
                                                              "complete_run"])
def test_a_stale_controller_is_rewritten_from_the_final_checkpoint(ref, tmp_path, capsys,
                                                                   summary_kept):
    """Killed after the final checkpoint, before controller.npz was written: the file
    still holds episode 0's controller. The rerun rewrites it from the checkpointed state."""
    config, ref_dir = ref
    run_dir = _interrupted(tmp_path, 1, chunks=2)  # the end of episode 0
    stale = (run_dir / "controller.npz").read_bytes()
    code, err = _run(config, tmp_path, capsys, "--only", "1")
    assert code == 0, err
    assert (run_dir / "controller.npz").read_bytes() != stale  # episode 1 moved M on
    (run_dir / "controller.npz").write_bytes(stale)
    if not summary_kept:
        (run_dir / "summary.json").unlink()
    code, err = _run(config, tmp_path, capsys, "--only", "1")
    assert code == 0, err
    if summary_kept:
        assert "controller.npz is not the run's final one" in err
    _assert_exact(run_dir, ref_dir / PAIRS[1])


def test_a_deleted_config_json_cannot_let_another_config_resume(ref, tmp_path, capsys):
    config, ref_dir = ref
    run_dir = _interrupted(tmp_path, 0, chunks=3)
    (run_dir / "config.json").unlink()
    code, err = _run(config, tmp_path, capsys, "--only", "0", "--set", "pair0.learning_rate=0.3")
    assert code == 2 and _short(err), err
    assert "different config (optimizer.learning_rate: 0.5 -> 0.3)" in err
    assert str(run_dir / "checkpoints" / "12") in err  # the checkpoint knew its config
    code, err = _run(config, tmp_path, capsys, "--only", "0")  # the same config resumes
    assert code == 0, err
    assert (run_dir / "config.json").read_text() == (ref_dir / PAIRS[0] / "config.json"
                                                     ).read_text()
    _assert_exact(run_dir, ref_dir / PAIRS[0])


def _event_steps(folder: Path, tag: str) -> list[int]:
    """Steps of the `tag` scalars in TensorBoard files (TFRecord framing; a record torn by
    the kill ends the file)."""
    from tensorboardX.proto import event_pb2

    steps = []
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            if pos + 12 + length + 4 > len(data):
                break
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            steps += [event.step for v in event.summary.value if v.tag == tag]
            pos += 12 + length + 4
    return steps


def _start(config: Path, out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "meta_opt.cli", "run", str(config), "--out",
                             str(out), "--no-progress", "--no-plots", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _long_config(tmp_path: Path, **extra) -> Path:
    """The toy sweep, long enough to be killed while it trains."""
    config = tmp_path / "long.py"
    config.write_text(CONFIG.replace("EXTRA = {}", f"EXTRA = {extra!r}"))
    return config


def test_tensorboard_events_before_a_kill_survive_it(tmp_path):
    """SIGKILL right after the first checkpoint appears: every event up to it is on disk
    (tensorboardX alone keeps the newest events in its queue and file buffer)."""
    config = _long_config(tmp_path, num_episodes=1, num_iters=200_000, log_every=2,
                          checkpoint_every=200)
    run_dir = tmp_path / "out" / "fault" / PAIRS[0]
    proc = _start(config, tmp_path / "out", "--only", "0")
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            folder = run_dir / "checkpoints"
            if folder.is_dir() and any(name.isdigit() for name in os.listdir(folder)):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.communicate()
    finally:
        proc.kill()
        proc.wait()
    saved = Checkpointer(run_dir / "checkpoints").latest_step()
    logged = [r["global_step"] for r in read_jsonl(run_dir / "metrics.jsonl")]
    want = [s for s in logged if s <= saved]
    assert saved == 200 and len(want) == 101  # the step-0 line and 100 chunks
    assert set(want) <= set(_event_steps(run_dir / "tensorboard", "train/loss"))


# --- damaged checkpoints ---------------------------------------------------------------------
def _damage(step_dir: Path, how: str) -> None:
    arrays = [f for f in (step_dir / "state").rglob("*") if f.is_file()
              and f.parent.name == "d"]
    if how == "truncated_arrays":
        for f in arrays:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "garbage_arrays":
        for f in arrays:
            f.write_bytes(os.urandom(f.stat().st_size))
    elif how == "garbage_metadata":
        (step_dir / "_CHECKPOINT_METADATA").write_text("{not json")
    elif how == "missing_item":
        shutil.rmtree(step_dir / "state", ignore_errors=True)


@pytest.mark.parametrize("how", ["truncated_arrays", "garbage_arrays", "garbage_metadata",
                                 "missing_item"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_exactly(
        ref, tmp_path, capsys, how):
    config, ref_dir = ref
    run_dir = _interrupted(tmp_path, 0, chunks=3)
    _damage(run_dir / "checkpoints" / "12", how)
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 0, err
    assert f"checkpoint {run_dir / 'checkpoints' / '12'} cannot be read" in err
    assert "resuming from step 8" in err
    assert list((run_dir / "checkpoints").glob("damaged_12_*"))  # moved aside, kept
    _assert_exact(run_dir, ref_dir / PAIRS[0])


def test_a_process_reports_a_damaged_checkpoint_in_one_line_each(ref, tmp_path):
    """In a real process (where nothing catches orbax's aftermath of the failed read, the
    "Event loop is closed" tracebacks of TensorStore's threads): a warning line per
    skipped checkpoint on stderr, nothing else."""
    config, ref_dir = ref
    run_dir = _interrupted(tmp_path, 0, chunks=3)
    for step in (12, 8):  # two failed reads: orbax's aftermath shows every time
        for f in (run_dir / "checkpoints" / str(step) / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(f.read_bytes()[:10])
    proc = _start(config, tmp_path, "--only", "0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2, err
    assert all(ln.startswith(f"warning: checkpoint {run_dir}") for ln in lines), err
    _assert_exact(run_dir, ref_dir / PAIRS[0])


def test_no_readable_checkpoint_is_refused_saying_how_to_restart(ref, tmp_path, capsys):
    config, _ = ref
    run_dir = _interrupted(tmp_path, 0, chunks=3)
    for step in (4, 8, 12):
        _damage(run_dir / "checkpoints" / str(step), "truncated_arrays")
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 2 and _short(err), err
    assert f"no checkpoint in {run_dir / 'checkpoints'} can be read" in err
    assert "run with --restart to start this pair over" in err


# --- garbage in the run directory's files ----------------------------------------------------
def test_garbage_in_run_files_is_named_and_rebuilt_where_exact(ref, tmp_path, capsys):
    config, ref_dir = ref
    # metrics.jsonl: a garbage line among those the checkpoint recorded -> refused.
    run_dir = _interrupted(tmp_path / "a", 0, chunks=3)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = "{garbage\n"
    (run_dir / "metrics.jsonl").write_text("".join(lines))
    code, err = _run(config, tmp_path / "a", capsys, "--only", "0")
    assert code == 2 and _short(err) and f"{run_dir / 'metrics.jsonl'}: its first" in err, err

    # summary.json garbage in a complete run -> rebuilt from the final checkpoint.
    run_dir = _copy(ref_dir / PAIRS[0], tmp_path / "b" / "fault" / PAIRS[0])
    (run_dir / "summary.json").write_text("{garbage")
    code, err = _run(config, tmp_path / "b", capsys, "--only", "0")
    assert code == 0 and f"{run_dir / 'summary.json'} cannot be read (not valid JSON" in err
    _assert_exact(run_dir, ref_dir / PAIRS[0])

    # config.json garbage, with a checkpoint -> rewritten from the checkpoint's config.
    run_dir = _interrupted(tmp_path / "c", 0, chunks=3)
    (run_dir / "config.json").write_text("[1, 2")
    code, err = _run(config, tmp_path / "c", capsys, "--only", "0")
    assert code == 0 and f"{run_dir / 'config.json'} cannot be used (not valid JSON" in err
    _assert_exact(run_dir, ref_dir / PAIRS[0])

    # config.json garbage, nothing else -> refused, naming it.
    run_dir = tmp_path / "d" / "fault" / PAIRS[0]
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{not json")
    code, err = _run(config, tmp_path / "d", capsys, "--only", "0")
    assert code == 2 and _short(err), err
    assert f"{run_dir / 'config.json'} cannot be read (not valid JSON" in err
    assert "config error" not in err


# --- user errors: one or two lines, exit 2 ---------------------------------------------------
@pytest.mark.parametrize("body, message", [
    ("def get_config(:\n", "cfg.py, line 1: syntax error"),
    (CONFIG.replace("EXTRA = {}", "EXTRA = {'num_iters': '20'}"),
     "ExperimentConfig.num_iters must be an integer, got '20' (str)"),
    (CONFIG.replace(f"toy.ToySGDConfig(**{SGD!r})", "toy.ToySGDConfig(learning_rate='0.1')"),
     "ToySGDConfig.learning_rate must be a number, got '0.1' (str)"),
    ("def get_config():\n    return 1 / 0\n", "running it raised ZeroDivisionError"),
])
def test_config_file_errors_are_short_and_name_the_file(tmp_path, capsys, body, message):
    config = tmp_path / "cfg.py"
    config.write_text(body)
    code, err = _run(config, tmp_path / "out", capsys)
    assert code == 2 and _short(err), err
    assert message in err and str(config) in err
    assert not (tmp_path / "out").exists()  # refused before anything was written


@pytest.mark.parametrize("override, message", [
    ("experiment.batch_size=65", "batch_size (65) is larger than the training split of task "
                                 "'_RunnerToy' (64 examples)"),
    ("experiment.experiment_name=..", "experiment_name must be a plain folder name"),
])
def test_bad_values_are_refused_before_anything_runs(ref, tmp_path, capsys, override, message):
    config, _ = ref
    code, err = _run(config, tmp_path / "sub" / "out", capsys, "--set", override)
    assert code == 2 and _short(err) and message in err, err
    assert not any(tmp_path.rglob("*.jsonl")) and not (tmp_path / "sub").exists()


def test_unwritable_out_and_plot_folders_are_refused(ref, tmp_path, capsys, monkeypatch):
    config, ref_dir = ref
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    code, err = _run(config, a_file / "out", capsys)
    assert code == 2 and _short(err) and f"--out {a_file / 'out'}: cannot write there" in err
    capsys.readouterr()
    assert cli.main(["plot", str(ref_dir), "--out", str(a_file / "plots")]) == 2
    err = capsys.readouterr().err
    assert _short(err) and str(a_file / "plots") in err and "choose a folder you can" in err

    real_mkdir = Path.mkdir  # a read-only file system (root ignores permission bits)

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, err = _run(config, tmp_path / "ro", capsys)
    assert code == 2 and _short(err) and "Read-only file system" in err, err


def test_data_status_on_an_unreadable_file_says_which_and_what_to_do(tmp_path, capsys,
                                                                     monkeypatch):
    from meta_opt.data import cache

    folder = tmp_path / "mnist"
    folder.mkdir()
    bad = folder / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(b"x")
    real_open = open

    def no_permission(path, *args, **kwargs):
        if Path(path) == bad:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(cache, "open", no_permission, raising=False)
    monkeypatch.setattr(cache, "DEFAULT_ROOT", tmp_path / "home_cache")
    monkeypatch.delenv(cache.ENV_VAR, raising=False)
    capsys.readouterr()
    assert cli.main(["data", "status", "--data-dir", str(tmp_path)]) == 2
    out, err = capsys.readouterr()
    assert "[unreadable] train-labels-idx1-ubyte.gz" in out
    assert f"cannot read {bad} (Permission denied)" in err and "chmod" in err and _short(err)


class _FullDisk:
    """A file whose writes fail as on a full disk (no file name, as write errors have)."""

    def __init__(self, file):
        self._file = file

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._file, name)


def test_a_full_disk_is_reported_not_masked_by_tensorboard(ref, tmp_path, capsys, monkeypatch):
    from tensorboardX import SummaryWriter

    from meta_opt.experiments.metrics import MetricsWriter

    config, _ = ref
    init = MetricsWriter.__init__

    def full_after_open(self, *args, **kwargs):
        init(self, *args, **kwargs)
        holder = getattr(self, "_log", self)
        holder._file = _FullDisk(holder._file)

    def close_fails(self):
        raise OSError(errno.ENOSPC, "flushing the event file failed")

    monkeypatch.setattr(MetricsWriter, "__init__", full_after_open)
    monkeypatch.setattr(SummaryWriter, "close", close_fails)
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 2 and _short(err), err
    metrics = tmp_path / "fault" / PAIRS[0] / "metrics.jsonl"
    assert f"writing {metrics} failed: No space left on device; free disk space" in err


def test_a_full_disk_at_a_checkpoint_is_reported_and_the_run_resumes(ref, tmp_path, capsys,
                                                                     monkeypatch):
    config, ref_dir = ref
    real_save, calls = Checkpointer.save, []

    def fills_up(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(Checkpointer, "save", fills_up)
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    run_dir = tmp_path / "fault" / PAIRS[0]
    assert code == 2 and _short(err), err
    assert f"writing {run_dir / 'checkpoints'} failed: No space left on device" in err
    monkeypatch.setattr(Checkpointer, "save", real_save)  # space freed
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 0, err
    _assert_exact(run_dir, ref_dir / PAIRS[0])


def test_double_ctrl_c_leaves_whole_checkpoints_and_no_traceback(ref, tmp_path, capsys,
                                                                 monkeypatch):
    """Both Ctrl-C arrive while a checkpoint is written: it is finished, then the run
    aborts (exit 130, a short message); no temporary folder is left; it resumes exactly."""
    import orbax.checkpoint as ocp

    config, ref_dir = ref
    real_save, calls = ocp.CheckpointManager.save, []

    def interrupted_twice(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_save(self, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", interrupted_twice)
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 130 and "Traceback" not in err and "aborted by Ctrl-C" in err, err
    checkpoints = tmp_path / "fault" / PAIRS[0] / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["4", "8"]  # no tmp folder
    assert Checkpointer(checkpoints).problem(8) is None
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)
    code, err = _run(config, tmp_path, capsys, "--only", "0")
    assert code == 0, err
    _assert_exact(tmp_path / "fault" / PAIRS[0], ref_dir / PAIRS[0])


# --- non-finite training loss ----------------------------------------------------------------
def test_a_nonfinite_loss_stops_the_pair_says_where_and_still_plots(ref, tmp_path, capsys):
    config, _ = ref
    code, err = _run(config, tmp_path, capsys, "--only", "0", "--set",
                     "pair0.learning_rate=1e38")
    assert code == 0, err
    run_dir = tmp_path / "fault" / PAIRS[0]
    # Where, independently: the per-step losses of the first chunk.
    from meta_opt.experiments.trainer import Trainer

    exp, _ = _pair(0)
    trainer = Trainer(exp, toy.ToySGDConfig(learning_rate=1e38, momentum=0.9))
    _, metrics = trainer.run_chunk(trainer.init())
    losses = np.asarray(metrics["train_loss"])
    step = int(np.argmin(np.isfinite(losses))) + 1
    assert not np.isfinite(losses).all() and 1 <= step <= 4
    assert (f"pair {PAIRS[0]}: training loss is {float(losses[step - 1])} at episode 0, step "
            f"{step} (global step {step}); stopping this pair") in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["nonfinite"] == {"episode": 0, "step": step, "global_step": step,
                                    "value": str(float(losses[step - 1])), "stopped": True}
    assert [(r["episode"], r["step"]) for r in read_jsonl(run_dir / "metrics.jsonl")] == [
        (0, 0), (0, 4)]  # nothing logged after the chunk where it happened
    from meta_opt.experiments.run_command import format_table

    table = format_table([(PAIRS[0], summary)])
    assert f"{PAIRS[0]} *" in table and f"at episode 0, step {step}" in table
    capsys.readouterr()
    assert cli.main(["plot", str(run_dir), "--out", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"

    code, err = _run(config, tmp_path / "on", capsys, "--only", "0", "--set",
                     "pair0.learning_rate=1e38", "--set", "experiment.stop_on_nonfinite=false")
    assert code == 0 and "training it on" in err, err
    on = json.loads((tmp_path / "on" / "fault" / PAIRS[0] / "summary.json").read_text())
    assert on["nonfinite"]["stopped"] is False and len(on["episodes"]) == 2
    assert cli.main(["plot", str(tmp_path / "on" / "fault"), "--out", str(tmp_path / "p2")]) == 0
    assert (tmp_path / "p2" / "loss.png").read_bytes()[:4] == b"\x89PNG"


# --- processes and downloads -----------------------------------------------------------------
def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_parallel_children_die_with_their_parent(tmp_path):
    # About two hours of toy training, a metrics line every ~0.1 s.
    config = _long_config(tmp_path, num_episodes=1, num_iters=1_000_000_000, log_every=10_000,
                          checkpoint_every=100_000_000, eval_every=0)
    out = tmp_path / "out"
    proc = _start(config, out, "--parallel", "2", "--max-group", "1")
    locks = [out / "fault" / name / ".lock" for name in PAIRS]
    children: list[int] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            metrics = [lock.parent / "metrics.jsonl" for lock in locks]
            if all(m.exists() and m.stat().st_size for m in metrics):
                break
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        children = [int(lock.read_text()) for lock in locks]
        assert all(_alive(pid) for pid in children)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 90
        while time.time() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in children), "children outlived their parent"
    finally:
        proc.kill()
        for pid in children:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    for lock in locks:  # each child checkpointed on its way out (SIGTERM, as on Ctrl-C)
        assert Checkpointer(lock.parent / "checkpoints").latest_step() is not None


def _serve(handler) -> tuple[str, socket.socket]:
    """A local server on a free port; `handler(conn)` serves each connection in a thread."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def loop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{server.getsockname()[1]}/file.gz", server


def _silent(conn):
    time.sleep(30)  # accepts, reads nothing, answers nothing
    conn.close()


def _trickle(conn):
    conn.recv(65536)
    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n")
    try:
        for _ in range(600):
            conn.sendall(b"x" * 10)
            time.sleep(0.05)
    except OSError:
        pass
    conn.close()


@pytest.mark.parametrize("handler, reason", [(_silent, "timed out"),
                                             (_trickle, "took more than 1 s")])
def test_a_stalled_download_fails_within_its_deadline_with_progress(tmp_path, handler, reason):
    from meta_opt.data import cache
    from meta_opt.data.checksums import FileSpec

    url, server = _serve(handler)
    spec = FileSpec("file.gz", hashlib.md5(b"").hexdigest(), (url,))
    lines, outcome = [], {}

    def fetch():
        try:
            cache.download(spec, tmp_path, timeout=30, deadline=1.0, report=lines.append)
        except OSError as err:
            outcome["error"] = str(err)

    start = time.monotonic()
    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    worker.join(timeout=20)
    server.close()
    assert not worker.is_alive(), "the download ignored its deadline"
    assert time.monotonic() - start < 10
    assert url in outcome["error"] and reason in outcome["error"], outcome
    assert lines[0] == f"downloading file.gz from {url} (at most 1 s in all)"
    assert not list(tmp_path.glob("*.part"))
