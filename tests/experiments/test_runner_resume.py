"""Exact resume: a run killed with SIGKILL (and one stopped with SIGTERM) mid-episode and
resumed ends bit-for-bit equal to an uninterrupted run (metrics.jsonl and final params).

The interrupted runs are real `python -m meta_opt.cli run` subprocesses; the reference is
the same pair run in this process. Checkpointing every other chunk makes the killed
process leave metrics lines past its last checkpoint, which resume must cut and recompute.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import runner_toy as toy

from meta_opt.experiments.checkpoints import Checkpointer
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.run_pair import Interrupted, run_pair

REPO = Path(__file__).resolve().parents[2]
EXP = dict(experiment_name="resume", workload_name=toy.TOY_TASK, seed=3, num_episodes=2,
           num_iters=60, log_every=2, checkpoint_every=4, eval_every=10, eval_batches=2,
           batch_size=16, keep_checkpoints=2)

CONFIG = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import runner_toy as toy
from meta_opt.experiments.config import ExperimentConfig
toy.register()

def get_config():
    return [(ExperimentConfig(**{EXP!r}), toy.ToySGDConfig(learning_rate=0.3, momentum=0.9))]
"""


def _start(config: Path, out: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "meta_opt.cli", "run", str(config), "--out", str(out),
         "--no-plots", "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_after_lines(proc: subprocess.Popen, metrics: Path, lines: int, sig: int):
    while proc.poll() is None and len(read_jsonl(metrics)) < lines:
        time.sleep(0.005)
    assert proc.poll() is None, f"run ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(sig)
    return proc.communicate(timeout=120)


def _without_timing(records):
    return [{k: v for k, v in r.items() if k != "step_time"} for r in records]


def test_killed_and_stopped_runs_resume_bit_for_bit(tmp_path):
    config = tmp_path / "cfg.py"
    config.write_text(CONFIG)
    out = tmp_path / "runs"
    run_dir = out / "resume" / "0__ToySGD"
    metrics = run_dir / "metrics.jsonl"

    # 1) SIGKILL in the middle of episode 0 (line 13 = step 26; checkpoints every 4 steps).
    proc = _start(config, out)
    _signal_after_lines(proc, metrics, 13, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()

    # 2) Resume, then SIGTERM in the middle of episode 1: checkpoint, message, exit 143.
    proc = _start(config, out)
    _, err = _signal_after_lines(proc, metrics, 42, signal.SIGTERM)
    assert proc.returncode == 143, err
    assert "Resume with" in err and "meta-opt run" in err
    assert not (run_dir / "summary.json").exists()

    # 3) Resume to the end.
    proc = _start(config, out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    ref_dir = tmp_path / "ref"
    run_pair(ExperimentConfig(**EXP), toy.ToySGDConfig(learning_rate=0.3, momentum=0.9),
             ref_dir, progress=False)
    got, want = read_jsonl(metrics), read_jsonl(ref_dir / "metrics.jsonl")
    chunks = EXP["num_episodes"] * EXP["num_iters"] // EXP["log_every"]
    assert len(want) == chunks + EXP["num_episodes"]  # and a step-0 line per episode
    assert [r["global_step"] for r in got] == [r["global_step"] for r in want]
    assert _without_timing(got) == _without_timing(want)  # exact float equality

    state, meta = Checkpointer(run_dir / "checkpoints").restore_raw()
    ref_state, ref_meta = Checkpointer(ref_dir / "checkpoints").restore_raw()
    positions = lambda m: {k: m[k] for k in ("episode", "step", "global_step")}
    assert positions(meta) == positions(ref_meta) == {"episode": 1, "step": 60, "global_step": 120}
    assert meta["config"] == ref_meta["config"]
    assert meta["metrics"]["lines"] == ref_meta["metrics"]["lines"] == len(want)
    leaves, ref_leaves = jax.tree.leaves(state), jax.tree.leaves(ref_state)
    assert len(leaves) == len(ref_leaves) > 0
    for a, b in zip(leaves, ref_leaves, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_after_a_kill_past_an_episode_start_keeps_one_step0_line(tmp_path):
    """Killed after episode 1's step-0 line was written but before its next checkpoint:
    the newest checkpoint is episode 0's end, at the same global step as that line. The
    resumed metrics must hold the line once, as an uninterrupted run does."""
    exp = ExperimentConfig(**{**EXP, "num_iters": 8, "log_every": 4, "checkpoint_every": 8,
                              "eval_every": 4})
    opt = toy.ToySGDConfig(learning_rate=0.3, momentum=0.9)
    polls = iter(range(100))
    run_dir = tmp_path / "killed"
    with pytest.raises(Interrupted):  # after episode 1's first chunk; checkpoints step 4
        run_pair(exp, opt, run_dir, progress=False, should_stop=lambda: next(polls) == 2)
    ckpt = Checkpointer(run_dir / "checkpoints")
    assert ckpt.steps() == [8, 12]
    shutil.rmtree(ckpt.directory / "12")  # as if killed before that save
    assert [(r["episode"], r["step"]) for r in read_jsonl(run_dir / "metrics.jsonl")][-2:] == [
        (1, 0), (1, 4)]
    run_pair(exp, opt, run_dir, progress=False)
    run_pair(exp, opt, tmp_path / "straight", progress=False)
    got = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["episode"], r["step"]) for r in got].count((1, 0)) == 1
    assert _without_timing(got) == _without_timing(read_jsonl(tmp_path / "straight" /
                                                              "metrics.jsonl"))
