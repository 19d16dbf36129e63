"""Tune the SGD baseline: a learning-rate grid, with and without momentum.

Same workload as the default comparison (digits MLP, full batch, 3 episodes), so the best
entry here is the "tuned SGD" to compare MetaOpt against. The five learning rates of each
momentum share one compiled program and run as one (momentum 0 and 0.9 are two
structures: without momentum there is no momentum buffer). Read the table at the end, or

    meta-opt run configs/sgd_lr_sweep.py
    meta-opt plot runs/sgd_lr_sweep

For tuning over seeds with a report, declare a study instead (configs/studies/).
"""

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.default_sweep import EXPERIMENT
from meta_opt.optimizers import OptimizerConfig

LEARNING_RATES = (0.01, 0.03, 0.1, 0.3, 1.0)
MOMENTA = (0.0, 0.9)


def get_config():
    exp = ExperimentConfig(**{**EXPERIMENT, "experiment_name": "sgd_lr_sweep"})
    return [
        (exp, OptimizerConfig.from_dict(
            {"optimizer_name": "SGD", "learning_rate": lr, "momentum": momentum}))
        for momentum in MOMENTA
        for lr in LEARNING_RATES
    ]
