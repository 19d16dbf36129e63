"""The built-in default sweep: what `meta-opt run` runs with no config file.

MetaOpt (scalar and diagonal controllers) against SGD, momentum, AdamW and DoG on the
offline 8x8-digits MLP (`ImageMLP_Digits8_Relu32`, bundled with scikit-learn), full batch,
3 episodes: MetaOpt's controller is carried from episode to episode, the baselines start
afresh each time. Sized to finish in well under 30 s on 2 CPUs.
"""

from __future__ import annotations

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.optimizers.config import OptimizerConfig

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

# What matched LR-tuned Adam on this MLP (docs/metaopt.md): Adam-scaled disturbances with
# base learning rate 0, a short history and a small controller learning rate.
METAOPT = dict(optimizer_name="MetaOpt", base_learning_rate=0.0, H=2, HH=2,
               scale_by_adam_betas=[0.9, 0.999], weight_decay=1e-4)

OPTIMIZERS = [
    dict(METAOPT, m_method="scalar"),
    dict(METAOPT, m_method="diagonal"),
    dict(optimizer_name="SGD", learning_rate=0.1),
    dict(optimizer_name="SGD", learning_rate=0.1, momentum=0.9),
    dict(optimizer_name="AdamW", learning_rate=1e-2),
    dict(optimizer_name="DoG"),
]


def get_config() -> list[tuple[ExperimentConfig, OptimizerConfig]]:
    """The default sweep's pairs (what `meta-opt run` runs without a config file)."""
    exp = ExperimentConfig(**EXPERIMENT)
    return [(exp, OptimizerConfig.from_dict(d)) for d in OPTIMIZERS]
