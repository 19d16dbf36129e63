"""A small study: SGD, momentum and AdamW tuned over learning-rate grids, against MetaOpt and
DoG at their defaults, on the 8x8-digits MLP, full batch, 3 episodes x 200 steps, 3 seeds.

Each family's grid (x 3 seeds) runs as one compiled program; the report selects each
family's best learning rate per seed on the last episode's final training loss (never on
the test split) and compares the families over seeds (median, IQR, grid-edge flags):

    meta-opt run configs/digits_study.py
    meta-opt report runs/digits_study        # report.md and PNGs in runs/digits_study/report/
"""

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.default_sweep import EXPERIMENT
from meta_opt.experiments.study import Family, Study
from meta_opt.optimizers import AdamWConfig, MetaOptConfig, OptimizerConfig, SGDConfig

HALF_DECADES = (0.03, 0.1, 0.3, 1.0, 3.0)


def get_config() -> Study:
    exp = ExperimentConfig(**{**EXPERIMENT, "experiment_name": "digits_study"})
    return Study(exp, seeds=(0, 1, 2), families=(
        Family("SGD", SGDConfig(), {"learning_rate": HALF_DECADES}),
        Family("Momentum 0.9", SGDConfig(momentum=0.9), {"learning_rate": HALF_DECADES}),
        Family("AdamW", AdamWConfig(), {"learning_rate": (1e-3, 3e-3, 1e-2, 3e-2, 0.1)}),
        Family("MetaOpt scalar", MetaOptConfig(m_method="scalar")),
        Family("MetaOpt diagonal", MetaOptConfig(m_method="diagonal")),
        Family("DoG", OptimizerConfig.from_dict({"optimizer_name": "DoG"})),
    ))
