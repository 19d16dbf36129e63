"""`TruncatedPES`: Persistent Evolution Strategies, unbiased ES over truncated unrolls.

Truncated ES ignores how theta shaped the state a truncation starts from, which biases
it. PES removes the bias: each inner run keeps the sum xi of every perturbation it has
been trained with (the accumulator), and the loss difference of each step is weighted
by the xi of the run that produced it:

    g_hat = 1 / (2 sigma^2 T) * sum_t xi_t (L_t(theta + .) - L_t(theta - .)),

where xi_t = accumulator + eps for steps of the run the chunk started in, and eps alone
for steps of a run that started inside the chunk (a reset: fresh params depend on no
earlier perturbation). After the chunk the accumulator is accumulator + eps when no run
ended, eps when one ended before the last step, and 0 when the last step ended one.
Summed over the truncations of a run, g_hat is an unbiased estimate of the gradient of
the Gaussian-smoothed loss with one independent perturbation per truncation.

References:
  Vicol, Metz & Sohl-Dickstein, "Unbiased Gradient Estimation in Unrolled Computation
  Graphs with Persistent Evolution Strategies", ICML 2021.
"""

from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp

from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.outer.antithetic import antithetic_unroll, sample_perturbations
from meta_opt.outer.gradient_estimator import (
    GradientEstimatorOut,
    UnrollingEstimator,
    masked_mean,
)
from meta_opt.outer.truncated_step import (
    TruncatedUnrollState,
    tile_theta,
    valid_before_first_done,
)
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily


@flax.struct.dataclass
class PESWorkerState:
    """The positive and negative runs and each task's accumulated perturbation."""

    pos_state: TruncatedUnrollState
    neg_state: TruncatedUnrollState
    accumulator: MetaParams


def _per_task(scalar: jax.Array, leaf: jax.Array) -> jax.Array:
    """Broadcasts a [num_tasks] array against a [num_tasks, ...] leaf."""
    return scalar.reshape(scalar.shape + (1,) * (leaf.ndim - 1))


def pes_accumulator_update(
    accumulator: MetaParams, eps: MetaParams, is_done: jax.Array
) -> MetaParams:
    """The accumulator after a chunk: acc + eps, eps, or 0 (see the module docstring).

    Args:
      accumulator: per-task pytree of summed perturbations (leading axis num_tasks).
      eps: per-task pytree of this chunk's perturbations (leading axis num_tasks).
      is_done: [T, num_tasks] flags of runs that ended at each step.
    """
    any_done, last_done = jnp.any(is_done, axis=0), is_done[-1]

    def leaf(a, e):
        kept = jnp.where(_per_task(any_done, a), e, a + e)
        return jnp.where(_per_task(last_done, a), jnp.zeros_like(a), kept)

    return jax.tree_util.tree_map(leaf, accumulator, eps)


def pes_gradient(
    accumulator: MetaParams,
    eps: MetaParams,
    delta_loss: jax.Array,
    is_done: jax.Array,
    std: float,
) -> MetaParams:
    """Per-task PES estimates from loss differences.

    Args:
      accumulator: per-task pytree of summed perturbations (leading axis num_tasks).
      eps: per-task pytree of this chunk's perturbations (leading axis num_tasks).
      delta_loss: [T, num_tasks] positive minus negative meta-loss (0 where masked).
      is_done: [T, num_tasks] done flags.
      std: perturbation scale sigma.

    Returns:
      Per-task gradient estimates, averaged over the T steps of the chunk.
    """
    num_steps = delta_loss.shape[0]
    before = valid_before_first_done(is_done)
    s_before = jnp.sum(jnp.where(before, delta_loss, 0.0), axis=0) / num_steps
    s_after = jnp.sum(jnp.where(before, 0.0, delta_loss), axis=0) / num_steps
    scale = 1.0 / (2.0 * std**2)

    def leaf(a, e):
        return scale * (_per_task(s_before, a) * (a + e) + _per_task(s_after, a) * e)

    return jax.tree_util.tree_map(leaf, accumulator, eps)


class TruncatedPES(UnrollingEstimator):
    """PES over truncations of `trunc_length` steps, `num_tasks` runs, antithetic pairs.

    Args:
      task_family: where tasks come from (vmapped over its sampled configs).
      learned_opt: the learned optimizer whose theta is being meta-trained.
      trunc_sched: length of each inner run.
      num_tasks: number of inner runs trained in parallel.
      trunc_length: inner steps per meta-step (one chunk).
      random_initial_iteration_offset: the first runs start at a step drawn uniformly from
        [0, offset), so that runs end at different meta-steps (see
        `VectorizedTruncatedStep`).
      std: perturbation scale sigma.
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

    def _init_impl(self, theta: MetaParams, key: chex.PRNGKey) -> PESWorkerState:
        state = super()._init_impl(theta, key)
        zeros = jax.tree_util.tree_map(
            jnp.zeros_like, tile_theta(theta, self.truncated_step.num_tasks)
        )
        return PESWorkerState(pos_state=state, neg_state=state, accumulator=zeros)

    def _estimate_impl(self, theta, state: PESWorkerState, key, data):
        step = self.truncated_step
        k_eps, k_unroll = jax.random.split(key)
        eps = sample_perturbations(theta, k_eps, step.num_tasks, self.std)
        pos_state, neg_state, pos_out, neg_out = antithetic_unroll(
            step,
            theta,
            eps,
            state.pos_state,
            state.neg_state,
            k_unroll,
            data,
            self.trunc_length,
            stack=self.stack_antithetic_samples,
        )
        mask = pos_out.mask & neg_out.mask
        delta = jnp.where(mask, pos_out.loss - neg_out.loss, 0.0)
        per_task = pes_gradient(state.accumulator, eps, delta, pos_out.is_done, self.std)
        grad = jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), per_task)
        new_state = PESWorkerState(
            pos_state=pos_state,
            neg_state=neg_state,
            accumulator=pes_accumulator_update(state.accumulator, eps, pos_out.is_done),
        )
        mean_loss = masked_mean((pos_out.loss + neg_out.loss) / 2, mask)
        metrics = {
            "mean_loss": mean_loss,
            "num_done": jnp.sum(pos_out.is_done),
            "masked_fraction": jnp.mean(~mask),
            "mean_inner_step": jnp.mean(pos_out.iteration),
        }
        return GradientEstimatorOut(mean_loss, grad, new_state, pos_out.iteration), metrics
