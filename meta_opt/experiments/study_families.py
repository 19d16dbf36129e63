"""The families of the standard tuned comparison (what `configs/studies/` runs).

SGD, SGD with momentum 0.9 and AdamW, each tuned over a half-decade learning-rate grid;
MetaOpt with a scalar and with a diagonal controller, untuned, at `MetaOptConfig()`'s
defaults; and the parameter-free DoG, DoWG, Prodigy, Mechanic (on SGD) and D-Adaptation
(AdamW), untuned, at their defaults. One function so that every workload's study
compares the same methods the same way and only the grids' positions differ.
"""

from __future__ import annotations

from meta_opt.experiments.config import ExperimentConfig
from meta_opt.experiments.study import Family, Study
from meta_opt.optimizers import (
    AdamWConfig,
    MetaOptConfig,
    OptimizerConfig,
    SGDConfig,
)

PARAMETER_FREE = ("DoG", "DoWG", "Prodigy", "Mechanic", "DAdaptAdamW")


def half_decades(lowest: int, highest: int) -> tuple[float, ...]:
    """Learning rates 10^(k/2) for k = lowest..highest (e.g. -2, 2: 0.1 ... 10)."""
    if highest < lowest:
        raise ValueError(f"half_decades: highest ({highest}) < lowest ({lowest})")
    return tuple(float(f"{10 ** (k / 2):.6g}") for k in range(lowest, highest + 1))


def standard_families(sgd: tuple[float, ...], momentum: tuple[float, ...],
                      adamw: tuple[float, ...], *, metaopt: MetaOptConfig | None = None,
                      parameter_free: tuple[str, ...] = PARAMETER_FREE
                      ) -> tuple[Family, ...]:
    """The tuned baselines (one learning-rate grid each), MetaOpt untuned, parameter-free.

    Args:
      sgd, momentum, adamw: the learning-rate grids of SGD, SGD momentum 0.9 and AdamW.
      metaopt: the MetaOpt settings of both MetaOpt families (default `MetaOptConfig()`);
        the diagonal family takes them with `m_method="diagonal"`.
      parameter_free: names of untuned parameter-free optimizers, at their defaults.
    """
    metaopt = metaopt or MetaOptConfig()
    return (
        Family("SGD", SGDConfig(), {"learning_rate": sgd}),
        Family("Momentum 0.9", SGDConfig(momentum=0.9), {"learning_rate": momentum}),
        Family("AdamW", AdamWConfig(), {"learning_rate": adamw}),
        Family("MetaOpt scalar", metaopt.replace(m_method="scalar")),
        Family("MetaOpt diagonal", metaopt.replace(m_method="diagonal")),
        *(Family(name, OptimizerConfig.from_dict({"optimizer_name": name}))
          for name in parameter_free),
    )


def standard_study(name: str, workload: str, *, full_batch: bool, batch_size: int,
                   num_episodes: int, num_iters: int, sgd: tuple[float, ...],
                   momentum: tuple[float, ...], adamw: tuple[float, ...],
                   seeds: tuple[int, ...] = (0, 1, 2), eval_batches: int = 8) -> Study:
    """A study of `standard_families` on one workload, in full-batch or stochastic mode.

    Full batch: one fixed training batch for the whole run, selection on the last
    episode's final train loss. Stochastic: fresh batches, selection on the validation
    loss of a held-out part of the training data (`outer_valid`); the test split is only
    reported. Every episode ends with an evaluation; one metrics line per 100 steps.
    """
    log_every = 100 if num_iters % 100 == 0 else num_iters
    exp = ExperimentConfig(
        experiment_name=name, workload_name=workload, full_batch=full_batch,
        batch_size=batch_size, num_episodes=num_episodes, num_iters=num_iters,
        log_every=log_every, eval_every=0, eval_batches=eval_batches,
        checkpoint_every=num_iters, valid_split=None if full_batch else "outer_valid")
    return Study(exp, standard_families(sgd, momentum, adamw), seeds=seeds)
