"""`FullGrad`: backpropagation through complete inner runs, rematerialised.

Each estimate starts `num_tasks` fresh runs and differentiates the mean meta-loss over
every step of each run (up to its sampled length) with respect to theta. Steps are
rematerialised (`jax.checkpoint`) so memory stays one step's activations per scan step
instead of all of them.

References:
  Maclaurin, Duvenaud & Adams, "Gradient-based Hyperparameter Optimization through
  Reversible Learning", ICML 2015; Andrychowicz et al., "Learning to learn by gradient
  descent by gradient descent", NeurIPS 2016.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from meta_opt.learned.base import LearnedOptimizer
from meta_opt.outer.gradient_estimator import (
    GradientEstimatorOut,
    UnrollingEstimator,
    masked_mean,
)
from meta_opt.outer.truncated_step import tile_theta, valid_before_first_done
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily


class FullGrad(UnrollingEstimator):
    """Exact meta-gradient of whole runs (stateless).

    Arguments as `FullES` (without `std`, `loss_type` and `stack_antithetic_samples`; the
    meta-loss is the mean over each run's steps), plus:

    Args:
      remat: rematerialise each inner step (`jax.checkpoint`); on by default because a
        whole run's activations rarely fit otherwise.
    """

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        meta_loss_split: str | None = None,
        remat: bool = True,
    ):
        self.remat = remat
        super().__init__(
            task_family,
            learned_opt,
            trunc_sched,
            num_tasks,
            whole_runs=True,
            meta_loss_split=meta_loss_split,
            truncated_alternative="TruncatedGrad",
        )

    def _estimate_impl(self, theta, state, key, data):
        step = self.truncated_step
        k_init, k_unroll = jax.random.split(key)

        def meta_loss(theta):
            theta_b = tile_theta(theta, step.num_tasks)
            start = step.init_step_state(theta_b, k_init, use_offset=False)
            _, out = step.unroll(
                theta_b, start, k_unroll, data, self.unroll_length, remat=self.remat
            )
            valid = valid_before_first_done(out.is_done) & out.mask
            return jnp.mean(masked_mean(out.loss, valid, axis=0))

        loss, grad = jax.value_and_grad(meta_loss)(theta)
        return GradientEstimatorOut(loss, grad, state, None), {"mean_loss": loss}
