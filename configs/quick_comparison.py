"""A quick untuned look: MetaOpt (scalar, diagonal) at its defaults against SGD, momentum
0.9 and AdamW at one common learning rate each, and DoG, on the 8x8-digits MLP, full
batch, 3 episodes x 200 steps, one seed (six pairs, about 15 s on 2 CPUs).

No baseline is tuned here, so this shows the curves, not who wins; for that run the
default comparison (`meta-opt run`) or a study in `configs/studies/`.

    meta-opt run configs/quick_comparison.py
"""

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.default_sweep import EXPERIMENT
from meta_opt.optimizers import OptimizerConfig

OPTIMIZERS = [
    dict(optimizer_name="MetaOpt", m_method="scalar"),
    dict(optimizer_name="MetaOpt", m_method="diagonal"),
    dict(optimizer_name="SGD", learning_rate=0.1),
    dict(optimizer_name="SGD", learning_rate=0.1, momentum=0.9),
    dict(optimizer_name="AdamW", learning_rate=1e-2),
    dict(optimizer_name="DoG"),
]


def get_config() -> list[tuple[ExperimentConfig, OptimizerConfig]]:
    exp = ExperimentConfig(**{**EXPERIMENT, "experiment_name": "quick_comparison"})
    return [(exp, OptimizerConfig.from_dict(d)) for d in OPTIMIZERS]
