"""`TruncatedES`: antithetic ES on one truncation at a time (biased, cheap, low variance).

Each meta-step perturbs theta, unrolls the +/- pair `trunc_length` steps from the
current state of each run, and weights the loss difference by this step's perturbation
only. It ignores how theta shaped the state the truncation starts from, so it is biased
towards greedy, short-horizon behaviour (e.g. too-large learning rates); `TruncatedPES`
fixes this. The runs continue from the positive trajectory (the pair differs only by
the perturbation, and a third, unperturbed unroll would cost 50% more).

References:
  Vicol, Metz & Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation
  Graphs with Persistent Evolution Strategies", ICML 2021 (section 3, truncation bias).
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
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily


class TruncatedES(UnrollingEstimator):
    """Antithetic ES over truncations (see module docstring); arguments as `TruncatedPES`."""

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        trunc_length: int = 10,
        random_initial_iteration_offset: int = 0,
        std: float = 0.01,
        meta_loss_split: str | None = None,
        stack_antithetic_samples: bool = True,
    ):
        self.stack_antithetic_samples = stack_antithetic_samples
        super().__init__(
            task_family,
            learned_opt,
            trunc_sched,
            num_tasks,
            trunc_length=trunc_length,
            std=std,
            random_initial_iteration_offset=random_initial_iteration_offset,
            meta_loss_split=meta_loss_split,
        )

    def _estimate_impl(self, theta, state, key, data):
        step = self.truncated_step
        k_eps, k_unroll = jax.random.split(key)
        eps = sample_perturbations(theta, k_eps, step.num_tasks, self.std)
        pos_state, _, pos_out, neg_out = antithetic_unroll(
            step,
            theta,
            eps,
            state,
            state,
            k_unroll,
            data,
            self.trunc_length,
            stack=self.stack_antithetic_samples,
        )
        mask = pos_out.mask & neg_out.mask
        delta = jnp.where(mask, pos_out.loss - neg_out.loss, 0.0)
        coeff = jnp.mean(delta, axis=0) / (2.0 * self.std**2)
        grad = es_gradient(eps, coeff)
        mean_loss = masked_mean((pos_out.loss + neg_out.loss) / 2, mask)
        metrics = {"mean_loss": mean_loss, "num_done": jnp.sum(pos_out.is_done)}
        return GradientEstimatorOut(mean_loss, grad, pos_state, pos_out.iteration), metrics
