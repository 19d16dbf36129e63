"""Full-batch MNIST MLP over 10 episodes: MetaOpt against tuned-style baselines.

In the style of the original MetaOpt figures: every episode re-initialises the model and
the baselines' state, while MetaOpt keeps its controller, so its loss curve should improve
from episode to episode until it matches the best baselines.

MNIST must be available offline or downloadable (see docs/data_and_tasks.md), e.g.

    meta-opt run configs/mnist_fullbatch_episodes.py --set experiment.data_dir=/path/to/data

Roughly 10-20 minutes on a laptop CPU; add `--parallel 3` to use more cores.
"""

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.optimizers import OptimizerConfig


def get_config():
    exp = ExperimentConfig(
        experiment_name="mnist_fullbatch_episodes",
        workload_name="ImageMLP_Mnist8_Relu32",
        seed=0,
        full_batch=True,
        num_episodes=10,
        num_iters=300,
        batch_size=1024,
        log_every=25,
        eval_every=100,
        eval_batches=4,
        checkpoint_every=100,
    )
    metaopt = dict(optimizer_name="MetaOpt", base_learning_rate=0.0, H=4, HH=2,
                   scale_by_adam_betas=[0.9, 0.999], weight_decay=1e-4,
                   meta_learning_rate=1e-3)
    optimizers = [
        dict(metaopt, m_method="scalar"),
        dict(metaopt, m_method="diagonal"),
        dict(optimizer_name="SGD", learning_rate=0.3),
        dict(optimizer_name="SGD", learning_rate=0.1, momentum=0.9),
        dict(optimizer_name="AdamW", learning_rate=1e-2),
        dict(optimizer_name="DoG"),
        dict(optimizer_name="DoWG"),
        dict(optimizer_name="Mechanic"),
        dict(optimizer_name="DAdaptAdamW"),
    ]
    return [(exp, OptimizerConfig.from_dict(d)) for d in optimizers]
