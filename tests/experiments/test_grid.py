"""Grids: pairs of one structure share one compiled program, and that changes nothing.

Members of a grid give exactly (bit for bit) the metrics and states they give alone; a
second pair that differs only in numeric hyperparameters or seed neither traces nor
compiles anything; a killed grid resumes member by member, exactly, even when its members
stopped at different positions; a non-terminal run prints plain progress lines; a rerun
takes its programs from the persistent compilation cache.
"""

from __future__ import annotations

import contextlib
import json
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
from meta_opt.experiments.grouping import plan_groups
from meta_opt.experiments.metrics import read_jsonl
from meta_opt.experiments.program import program_for
from meta_opt.experiments.run_group import Interrupted, Member, run_group
from meta_opt.experiments.run_pair import run_pair
from meta_opt.optimizers import MetaOptConfig, SGDConfig

REPO = Path(__file__).resolve().parents[2]
EXP = dict(experiment_name="grid", workload_name=toy.TOY_TASK, seed=0, num_episodes=2,
           num_iters=8, log_every=4, checkpoint_every=4, eval_every=4, eval_batches=2,
           batch_size=16)
GRID = [(lr, seed) for lr in (0.1, 0.5) for seed in (1, 2)]


def exp(**changes) -> ExperimentConfig:
    return ExperimentConfig(**{**EXP, **changes})


def without_timing(records):
    return [{k: v for k, v in r.items() if k != "step_time"} for r in records]


def _leaves(run_dir: Path):
    """The newest checkpoint's positions, config and metrics line count, and its arrays
    (the metrics digest differs between runs: it covers the step times)."""
    state, meta = Checkpointer(run_dir / "checkpoints").restore_raw()
    kept = {k: meta[k] for k in ("episode", "step", "global_step", "config")}
    return {**kept, "lines": meta["metrics"]["lines"]}, [np.asarray(x)
                                                        for x in jax.tree.leaves(state)]


def _assert_same_run(got: Path, want: Path) -> None:
    assert without_timing(read_jsonl(got / "metrics.jsonl")) == without_timing(
        read_jsonl(want / "metrics.jsonl"))  # exact float equality
    (meta_a, a), (meta_b, b) = _leaves(got), _leaves(want)
    assert meta_a == meta_b and len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("opt", [SGDConfig(momentum=0.9),
                                 MetaOptConfig(H=2, HH=2, meta_learning_rate=1e-2)],
                         ids=["sgd", "metaopt"])
def test_grid_members_match_their_solo_runs_bit_for_bit(tmp_path, opt):
    key = "learning_rate" if isinstance(opt, SGDConfig) else "meta_learning_rate"
    members = [Member(exp(seed=seed), opt.replace(**{key: lr}), tmp_path / "grid" / f"{i}")
               for i, (lr, seed) in enumerate(GRID)]
    assert len({id(program_for(m.exp_cfg, m.opt_cfg)) for m in members}) == 1
    summaries = run_group(members)
    assert [s["group_size"] for s in summaries] == [4] * 4
    losses = set()
    for i, m in enumerate(members):
        solo = run_pair(m.exp_cfg, m.opt_cfg, tmp_path / "solo" / f"{i}", progress=False)
        assert solo["group_size"] == 1
        _assert_same_run(m.run_dir, tmp_path / "solo" / f"{i}")
        losses.add(solo["last_episode_final_loss"])
    assert len(losses) == 4  # each member trained with its own learning rate and seed


@contextlib.contextmanager
def count_compiles():
    """The names of the programs XLA compiles inside the block."""
    compiles = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield compiles
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def test_a_pair_differing_only_in_numbers_or_seed_compiles_nothing(tmp_path):
    cfg = exp(experiment_name="traces")
    run_pair(cfg, SGDConfig(learning_rate=0.1, momentum=0.9), tmp_path / "a", progress=False)
    program = program_for(cfg, SGDConfig(learning_rate=0.1, momentum=0.9))
    traces = program.trace_count
    with count_compiles() as compiles:
        run_pair(cfg.replace(seed=7), SGDConfig(learning_rate=0.3, momentum=0.5),
                 tmp_path / "b", progress=False)
    assert program.trace_count == traces and compiles == []
    assert program.value_paths == ("learning_rate", "momentum")


def test_structure_decides_sharing_and_zero_is_structure():
    cfg = exp(experiment_name="structure")
    base = MetaOptConfig(H=2, HH=2, base_learning_rate=0.1)
    program = program_for(cfg, base)
    # A nonzero base learning rate is a value (MetaOpt records the rates it plays), but
    # zero is structure: with eta = 0 MetaOpt compiles the cheaper fake rollout.
    assert {"base_learning_rate", "meta_optimizer.learning_rate", "weight_decay"} <= set(
        program.value_paths)
    faster = base.meta_optimizer.replace(learning_rate=0.5)
    assert program_for(cfg, base.replace(meta_optimizer=faster)) is program
    assert program_for(cfg.replace(seed=3), base) is program
    assert program_for(cfg, base.replace(base_learning_rate=0.2)) is program
    assert program_for(cfg, base.replace(base_learning_rate=0.0)) is not program
    assert program_for(cfg, base.replace(H=3)) is not program
    assert program_for(cfg.replace(log_every=2), base) is not program  # another chunk
    # The loop's lengths and cadences are not compiled: same program, but not one group.
    assert program_for(cfg.replace(num_iters=12, checkpoint_every=12), base) is program
    # Zero is structure (no momentum buffer), any other momentum a value.
    sgd = program_for(cfg, SGDConfig(momentum=0.9))
    assert program_for(cfg, SGDConfig(momentum=0.5)) is sgd
    assert program_for(cfg, SGDConfig(momentum=0.0)) is not sgd
    pairs = [(cfg, SGDConfig(learning_rate=lr)) for lr in (0.1, 0.2, 0.3)]
    pairs.append((cfg, SGDConfig(momentum=0.9)))
    pairs.append((cfg.replace(seed=4, num_iters=12, checkpoint_every=12), SGDConfig()))
    assert plan_groups(pairs, [0, 1, 2, 3, 4]) == [[0, 1, 2], [3], [4]]
    assert plan_groups(pairs, [0, 1, 2, 3], max_size=2) == [[0, 1], [2], [3]]


CONFIG = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import runner_toy as toy
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.optimizers import SGDConfig
toy.register()

def get_config():
    base = ExperimentConfig(**{{**{EXP!r}, "num_iters": 40, "log_every": 2,
                               "checkpoint_every": 4, "eval_every": 10}})
    return [(base.replace(seed=seed), SGDConfig(learning_rate=lr, momentum=0.9))
            for lr, seed in {GRID!r}]
"""


def _cli(config: Path, out: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), META_OPT_COMPILE_CACHE=str(cache))
    return subprocess.Popen(
        [sys.executable, "-m", "meta_opt.cli", "run", str(config), "--out", str(out),
         "--no-plots"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


@pytest.fixture(scope="module")
def killed_grid(tmp_path_factory):
    """A 4-member grid run as `meta-opt run` (stdout a pipe, a fresh compile cache),
    killed with SIGKILL in episode 0, then resumed to the end by the same command."""
    root = tmp_path_factory.mktemp("killed_grid")
    config = root / "cfg.py"
    config.write_text(CONFIG)
    out, cache = root / "runs", root / "cache"
    metrics = out / "grid" / "3_SGD" / "metrics.jsonl"
    proc = _cli(config, out, cache)
    while proc.poll() is None and len(read_jsonl(metrics)) < 8:  # step 14 of episode 0
        time.sleep(0.005)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (out / "grid" / "0_SGD" / "summary.json").exists()
    proc = _cli(config, out, cache)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    return out / "grid", stdout, sorted(p.name for p in cache.glob("*"))


def test_killed_grid_resumes_member_by_member_exactly(killed_grid, tmp_path):
    grid_dir, _, _ = killed_grid
    from meta_opt.experiments.sweep import load_sweep

    config = tmp_path / "cfg.py"
    config.write_text(CONFIG)
    for i, (exp_cfg, opt_cfg) in enumerate(load_sweep(config)):
        name = f"{i}_SGD"
        run_pair(exp_cfg, opt_cfg, tmp_path / name, progress=False)
        _assert_same_run(grid_dir / name, tmp_path / name)
        assert json.loads((grid_dir / name / "summary.json").read_text())["group_size"] == 4


@pytest.mark.parametrize("keep", [3, 1])
def test_members_stopped_at_different_positions_resume_exactly(tmp_path, keep):
    """As if a kill had come between two members' saves: one member's newest checkpoint is
    gone. With older checkpoints kept, every member goes back to the laggard's and they
    continue together; without, the laggard continues alone, the others together."""
    members = [Member(exp(seed=seed, checkpoint_every=4, keep_checkpoints=keep),
                      SGDConfig(learning_rate=lr, momentum=0.9), tmp_path / "grid" / f"{i}")
               for i, (lr, seed) in enumerate(GRID)]
    polls = iter(range(100))
    with pytest.raises(Interrupted):  # after episode 1's first chunk
        run_group(members, should_stop=lambda: next(polls) == 2)
    lagging = Checkpointer(members[1].run_dir / "checkpoints")
    assert lagging.steps() == [4, 8, 12][-keep:]
    shutil.rmtree(lagging.directory / "12")
    if keep == 1:  # the laggard restarts from scratch
        assert lagging.latest_step() is None
    with count_compiles() as compiles:
        summaries = run_group(members)
    assert [s["group_size"] for s in summaries] == ([4] * 4 if keep == 3 else [3, 1, 3, 3])
    if keep == 3:  # the same program, fed restored states laid out as its own outputs
        assert compiles == []
    for i, m in enumerate(members):
        run_pair(m.exp_cfg, m.opt_cfg, tmp_path / "solo" / f"{i}", progress=False)
        _assert_same_run(m.run_dir, tmp_path / "solo" / f"{i}")


def test_non_terminal_output_prints_sweep_compile_chunk_and_pair_lines(killed_grid):
    _, stdout, _ = killed_grid
    lines = stdout.splitlines()
    assert any("[0/4 pairs" in line and "compiling (4 pairs, one program)" in line
               for line in lines)
    assert any("compiled in" in line for line in lines)
    chunk_lines = [line for line in lines if "steps/s" in line and "episode 2/2" in line]
    assert any("step 40/40 loss" in line and "(median of 4)" in line for line in chunk_lines)
    done = [line for line in lines if ": done, loss@end" in line]
    assert len(done) == 4 and done[-1].startswith("[4/4 pairs")
    assert any("about" in line and "left]" in line for line in done[:-1])
    header = next(line for line in lines if line.startswith("pair "))
    assert "train steps/s" in header and "wall s" in header


def test_a_rerun_takes_its_programs_from_the_compile_cache(killed_grid):
    grid_dir, stdout, cache_entries = killed_grid
    assert cache_entries  # the killed run wrote its compiled programs
    summaries = [json.loads((grid_dir / f"{i}_SGD" / "summary.json").read_text())
                 for i in range(4)]
    # The resumed group's programs (model init, episode start, chunk, evaluation) all came
    # from the cache.
    assert summaries[0]["programs_from_compile_cache"] == 4
    assert "(4 from the compile cache)" in stdout
