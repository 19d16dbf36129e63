"""`TruncatedGrad`: backpropagation through each truncation (truncated BPTT).

The meta-gradient of the mean meta-loss of a `trunc_length`-step chunk, by reverse-mode
autodiff through the scan; the gradient through the chunk's starting state is cut
(`stop_gradient`), which makes it biased like `TruncatedES`, and backpropagating
through many inner steps can explode on chaotic losses.

References:
  Wu et al., "Understanding Short-Horizon Bias in Stochastic Meta-Optimization", ICLR 2018.
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
from meta_opt.outer.truncated_step import tile_theta
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily


class TruncatedGrad(UnrollingEstimator):
    """Truncated backprop through time over `num_tasks` runs.

    Arguments as `TruncatedPES` (without `std` and `stack_antithetic_samples`), plus:

    Args:
      remat: rematerialise each inner step (`jax.checkpoint`) to hold one step's
        activations instead of `trunc_length` steps', at the cost of a second forward pass.
    """

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        trunc_length: int = 10,
        random_initial_iteration_offset: int = 0,
        meta_loss_split: str | None = None,
        remat: bool = False,
    ):
        self.remat = remat
        super().__init__(
            task_family,
            learned_opt,
            trunc_sched,
            num_tasks,
            trunc_length=trunc_length,
            random_initial_iteration_offset=random_initial_iteration_offset,
            meta_loss_split=meta_loss_split,
        )

    def _estimate_impl(self, theta, state, key, data):
        step = self.truncated_step

        def meta_loss(theta):
            theta_b = tile_theta(theta, step.num_tasks)
            new_state, out = step.unroll(
                theta_b, state, key, data, self.trunc_length, remat=self.remat
            )
            return masked_mean(out.loss, out.mask), (new_state, out)

        (loss, (new_state, out)), grad = jax.value_and_grad(meta_loss, has_aux=True)(theta)
        new_state = jax.lax.stop_gradient(new_state)
        metrics = {"mean_loss": loss, "num_done": jnp.sum(out.is_done)}
        return GradientEstimatorOut(loss, grad, new_state, out.iteration), metrics
