"""Wall time of a sweep against one pair: what a grid costs on top of a single run.

In one run of this script, through the runner as a user calls it (`python -m meta_opt.cli
run CONFIG`, one process each, checkpoints, metrics.jsonl and TensorBoard on, plots off):

- one SGD pair alone, and
- a 5-learning-rate x 3-seed SGD grid (15 pairs),

both on the 8x8-digits MLP (`ImageMLP_Digits8_Relu32`), full batch, 3 episodes x 200
steps, the default sweep's logging and checkpoint cadence; then the ratio grid / single
(target: <= 3x). Also the wall time of `make run`'s command, the built-in default
comparison (target: <= 30 s on 2 cores after install). Every run starts with an empty
output folder and, unless `--compile-cache` is given, without the persistent compilation
cache: the times are those of a first run (with a warm cache a rerun skips compiling).

    python benchmarks/sweep_throughput.py [--repeats 3] [--compile-cache DIR]

Prints each command's median wall time over the repeats (process start to exit) and the
per-pair breakdown the runner records in summary.json (compile, train, other).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEARNING_RATES = (0.03, 0.1, 0.3, 1.0, 3.0)
SEEDS = (0, 1, 2)

CONFIG = """
from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.default_sweep import EXPERIMENT
from meta_opt.optimizers import SGDConfig


def get_config():
    exp = ExperimentConfig(**{{**EXPERIMENT, "experiment_name": "{name}"}})
    return [(exp.replace(seed=seed), SGDConfig(learning_rate=lr))
            for lr in {lrs!r} for seed in {seeds!r}]
"""


def _run(args: list[str], cache: str) -> float:
    """Seconds from process start to exit of `python -m meta_opt.cli run ARGS`."""
    env = dict(os.environ, META_OPT_COMPILE_CACHE=cache)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "meta_opt.cli", "run", *args, "--no-plots",
                           "--no-progress"], cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"meta-opt run {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def _breakdown(exp_dir: Path) -> str:
    """Mean per-pair seconds of the runner's own accounting (summary.json)."""
    summaries = [json.loads(p.read_text()) for p in exp_dir.glob("*/summary.json")]
    mean = lambda k: statistics.mean(s[k] for s in summaries)
    return (f"per pair: wall {mean('wall_seconds'):.2f} s = compile "
            f"{mean('compile_seconds'):.2f} + train {mean('train_seconds'):.3f} + other "
            f"{mean('overhead_seconds'):.2f}, {len(summaries)} pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs of each command (median)")
    parser.add_argument("--compile-cache", default="off",
                        help="persistent compilation cache folder for every run (default: "
                             "off, the first-run times)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        configs = {}
        for name, lrs, seeds in (("single", LEARNING_RATES[1:2], SEEDS[:1]),
                                 ("grid", LEARNING_RATES, SEEDS)):
            configs[name] = tmp / f"{name}.py"
            configs[name].write_text(CONFIG.format(name=name, lrs=lrs, seeds=seeds))
        times: dict[str, list[float]] = {"single": [], "grid": [], "default": []}
        last_out: dict[str, Path] = {}
        for r in range(args.repeats):  # in rotation, so machine drift hits all alike
            for name in times:
                out = tmp / f"out_{name}_{r}"
                cmd = ([] if name == "default" else [str(configs[name])]) + ["--out", str(out)]
                times[name].append(_run(cmd, args.compile_cache))
                last_out[name] = out
        med = {k: statistics.median(v) for k, v in times.items()}
        print("Sweep throughput: digits MLP, full batch, 3 episodes x 200 steps, checkpoints "
              f"and logs on, compile cache {args.compile_cache}; median of {args.repeats}, "
              "process start to exit")
        print(f"  one SGD pair alone          {med['single']:7.2f} s   "
              f"({_breakdown(last_out['single'] / 'single')})")
        print(f"  5 lr x 3 seeds SGD grid     {med['grid']:7.2f} s   "
              f"({_breakdown(last_out['grid'] / 'grid')})")
        print(f"  ratio grid / single         {med['grid'] / med['single']:7.2f} x   "
              f"(target <= 3x)")
        print(f"  make run (default study)    {med['default']:7.2f} s   (target <= 30 s; "
              f"{_breakdown(last_out['default'] / 'default')})")


if __name__ == "__main__":
    main()
