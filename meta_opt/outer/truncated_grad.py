"""`TruncatedGrad`: backpropagation through each truncation (truncated BPTT).

The meta-gradient of the mean meta-loss of a `trunc_length`-step chunk, by reverse-mode
autodiff through the scan; the gradient through the chunk's starting state is cut
(`stop_gradient`), which makes it biased like `TruncatedES`, and backpropagating
through many inner steps can explode on chaotic losses.

References:
  Wu et al., "Understanding Short-Horizon Bias in Stochastic Meta-Optimization", ICLR 2018.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from meta_opt.learned.base import LearnedOptimizer
from meta_opt.outer.gradient_estimator import (
    GradientEstimator,
    GradientEstimatorOut,
    WorkerWeights,
    masked_mean,
)
from meta_opt.outer.truncated_step import VectorizedTruncatedStep, tile_theta
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily


class TruncatedGrad(GradientEstimator):
    """Truncated backprop through time over `num_tasks` runs; arguments as `TruncatedPES`."""

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
        if int(trunc_length) < 1:
            raise ValueError(f"TruncatedGrad needs trunc_length >= 1, got {trunc_length}")
        self.truncated_step = VectorizedTruncatedStep(
            task_family,
            learned_opt,
            trunc_sched,
            num_tasks,
            random_initial_iteration_offset=random_initial_iteration_offset,
            meta_loss_split=meta_loss_split,
        )
        self.trunc_length, self.remat = int(trunc_length), remat
        self.trace_count = 0
        self._init = jax.jit(
            lambda theta, key: self.truncated_step.init_step_state(
                tile_theta(theta, self.truncated_step.num_tasks), key
            )
        )
        self._estimate = jax.jit(self._estimate_impl)

    def init_worker_state(self, worker_weights: WorkerWeights, key: chex.PRNGKey):
        return self._init(worker_weights.theta, key)

    def _estimate_impl(self, theta, state, key, data):
        self.trace_count += 1
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

    def compute_gradient_estimate(self, worker_weights, key, state, with_summary=False):
        del with_summary  # metrics are cheap scalars; always returned
        data = self.truncated_step.get_data(self.trunc_length)
        return self._estimate(worker_weights.theta, state, key, data)
