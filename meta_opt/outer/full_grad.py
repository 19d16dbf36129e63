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
from meta_opt.outer.truncated_step import (
    VectorizedTruncatedStep,
    tile_theta,
    valid_before_first_done,
)
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily


class FullGrad(GradientEstimator):
    """Exact meta-gradient of whole runs (stateless); arguments as `FullES`."""

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        meta_loss_split: str | None = None,
        remat: bool = True,
    ):
        if trunc_sched.max_length > 100_000:
            raise ValueError(
                f"FullGrad unrolls whole runs; trunc_sched.max_length={trunc_sched.max_length} "
                "is too long (use a finite schedule or TruncatedGrad)"
            )
        self.truncated_step = VectorizedTruncatedStep(
            task_family, learned_opt, trunc_sched, num_tasks, meta_loss_split=meta_loss_split
        )
        self.unroll_length, self.remat = int(trunc_sched.max_length), remat
        self.trace_count = 0
        self._estimate = jax.jit(self._estimate_impl)

    def init_worker_state(self, worker_weights: WorkerWeights, key: chex.PRNGKey):
        del worker_weights, key
        return jnp.zeros((), jnp.int32)  # FullGrad keeps no state between estimates

    def _estimate_impl(self, theta, state, key, data):
        self.trace_count += 1
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

    def compute_gradient_estimate(self, worker_weights, key, state, with_summary=False):
        del with_summary  # metrics are cheap scalars; always returned
        data = self.truncated_step.get_data(self.unroll_length)
        return self._estimate(worker_weights.theta, state, key, data)
