"""`FullES`: antithetic evolution strategies over complete inner runs.

Every estimate starts `num_tasks` fresh runs, trains each to the end of its sampled
length with theta + eps and theta - eps (common random numbers), scores each run by the
mean (or last) meta-loss over its steps, and returns

    g_hat = mean_i eps_i (L(theta + eps_i) - L(theta - eps_i)) / (2 sigma^2),

an unbiased estimate of the gradient of the Gaussian-smoothed meta-loss
E_eps[L(theta + eps)]. The scan always runs `trunc_sched.max_length` steps; steps after
a run ends are masked out.

References:
  Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement
  Learning", 2017; Metz et al., "Gradients are Not All You Need", 2021.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from meta_opt.learned.base import LearnedOptimizer
from meta_opt.outer.antithetic import antithetic_unroll, es_gradient, sample_perturbations
from meta_opt.outer.gradient_estimator import (
    GradientEstimatorOut,
    UnrollingEstimator,
    masked_mean,
)
from meta_opt.outer.truncated_step import tile_theta, valid_before_first_done
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily

LOSS_TYPES = ("avg", "last")


def run_score(loss: jax.Array, valid: jax.Array, loss_type: str) -> jax.Array:
    """[num_tasks] score of each run from [T, num_tasks] losses over its valid steps."""
    if loss_type == "avg":
        return masked_mean(loss, valid, axis=0)
    last = jnp.maximum(jnp.sum(valid, axis=0) - 1, 0)
    return jnp.take_along_axis(loss, last[None, :], axis=0)[0]


class FullES(UnrollingEstimator):
    """Antithetic ES on whole inner runs (stateless between estimates).

    Args:
      task_family: where tasks come from (vmapped over its sampled configs).
      learned_opt: the learned optimizer whose theta is being meta-trained.
      trunc_sched: length of each run (its sampled length; the scan covers `max_length`).
      num_tasks: number of runs per estimate.
      std: perturbation scale sigma.
      loss_type: "avg" (mean meta-loss over the run) or "last" (final step's).
      meta_loss_split: None for the train loss of each step, or the split whose loss
        scores the updated params (see `VectorizedTruncatedStep`).
      stack_antithetic_samples: run the +/- pair as one batch (True) or two scans.
    """

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        std: float = 0.01,
        loss_type: str = "avg",
        meta_loss_split: str | None = None,
        stack_antithetic_samples: bool = True,
    ):
        if loss_type not in LOSS_TYPES:
            raise ValueError(f"unknown loss_type '{loss_type}'; known: {', '.join(LOSS_TYPES)}")
        self.loss_type = loss_type
        self.stack_antithetic_samples = stack_antithetic_samples
        super().__init__(
            task_family,
            learned_opt,
            trunc_sched,
            num_tasks,
            whole_runs=True,
            std=std,
            meta_loss_split=meta_loss_split,
            truncated_alternative="TruncatedPES",
        )

    def _estimate_impl(self, theta, state, key, data):
        step = self.truncated_step
        k_eps, k_init, k_unroll = jax.random.split(key, 3)
        eps = sample_perturbations(theta, k_eps, step.num_tasks, self.std)
        start = step.init_step_state(tile_theta(theta, step.num_tasks), k_init, use_offset=False)
        _, _, pos_out, neg_out = antithetic_unroll(
            step,
            theta,
            eps,
            start,
            start,
            k_unroll,
            data,
            self.unroll_length,
            stack=self.stack_antithetic_samples,
        )
        valid = valid_before_first_done(pos_out.is_done) & pos_out.mask & neg_out.mask
        pos_score = run_score(pos_out.loss, valid, self.loss_type)
        neg_score = run_score(neg_out.loss, valid, self.loss_type)
        coeff = (pos_score - neg_score) / (2.0 * self.std**2)
        grad = es_gradient(eps, coeff)
        mean_loss = jnp.mean((pos_score + neg_score) / 2)
        metrics = {"mean_loss": mean_loss, "mean_run_length": jnp.mean(jnp.sum(valid, axis=0))}
        return GradientEstimatorOut(mean_loss, grad, state, None), metrics
