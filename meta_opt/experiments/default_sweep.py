"""The built-in default comparison: what `meta-opt run` runs with no config file.

MetaOpt (scalar and diagonal controllers) at its defaults, untuned, against SGD, momentum
0.9 and AdamW each tuned over a 5-point half-decade learning-rate grid, and DoG, on the
offline 8x8-digits MLP (`ImageMLP_Digits8_Relu32`, bundled with scikit-learn), full batch,
5 episodes x 300 steps, seed 0: MetaOpt's controller is carried from episode to episode,
the baselines start afresh each time. It ends with the study's table (each family's best
grid member on the last episode's train loss). Each grid runs as one compiled program,
so the whole comparison takes about 16 s on 2 CPUs. `EXPERIMENT` is the shared
experiment of the small digits configs in `configs/`.
"""

from __future__ import annotations

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.study import Study
from meta_opt.experiments.study_families import half_decades, standard_families

EXPERIMENT = dict(
    experiment_name="default",
    workload_name="ImageMLP_Digits8_Relu32",
    seed=0,
    full_batch=True,
    num_episodes=3,
    num_iters=200,
    batch_size=256,
    log_every=20,
    eval_every=100,
    eval_batches=1,
    checkpoint_every=100,
)

# The comparison's grids: half-decade learning rates around each baseline's best on this
# MLP (docs/results.md), so that "tuned" is honest (the report flags a best at an edge).
SGD_GRID = half_decades(-2, 2)       # 0.1 ... 10
MOMENTUM_GRID = half_decades(-3, 1)  # 0.0316 ... 3.16
ADAMW_GRID = half_decades(-5, -1)    # 0.00316 ... 0.316


def get_config() -> Study:
    """The default comparison (what `meta-opt run` runs without a config file): one seed
    of the digits study of docs/results.md, 5 episodes x 300 steps, full batch."""
    exp = ExperimentConfig(**{**EXPERIMENT, "num_episodes": 5, "num_iters": 300,
                              "log_every": 100, "eval_every": 0, "checkpoint_every": 300})
    return Study(exp, standard_families(SGD_GRID, MOMENTUM_GRID, ADAMW_GRID,
                                        parameter_free=("DoG",)), seeds=(0,))
