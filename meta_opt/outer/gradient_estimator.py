"""The `GradientEstimator` interface and the data that flows between learner and workers.

A gradient estimator owns the inner training it needs (a `VectorizedTruncatedStep`)
and turns meta-parameters theta plus its persistent unroll state into an estimate of
the meta-gradient. It is the unit a worker runs: `init_worker_state(worker_weights,
key)` once, then `compute_gradient_estimate(worker_weights, key, state)` per meta-step.
The heavy part of every estimator is one jitted function that compiles once;
`trace_count` counts its traces so tests can assert it.
"""

from __future__ import annotations

from typing import Any

import chex
import flax
import jax

from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.outer.truncated_step import VectorizedTruncatedStep


@flax.struct.dataclass
class WorkerWeights:
    """What the central learner sends to workers: theta and (optional) extra state."""

    theta: MetaParams
    theta_model_state: Any = None
    outer_state: Any = None


@flax.struct.dataclass
class GradientEstimatorOut:
    """One estimate: mean meta-loss, gradient w.r.t. theta, next unroll state, info."""

    mean_loss: jax.Array
    grad: MetaParams
    unroll_state: Any
    unroll_info: Any = None


class GradientEstimator:
    """Base class of FullES, TruncatedES, TruncatedPES, TruncatedGrad and FullGrad."""

    truncated_step: VectorizedTruncatedStep
    trace_count: int = 0

    @property
    def task_family(self):
        return self.truncated_step.task_family

    @property
    def learned_opt(self) -> LearnedOptimizer:
        return self.truncated_step.learned_opt

    def init_worker_state(self, worker_weights: WorkerWeights, key: chex.PRNGKey) -> Any:
        raise NotImplementedError

    def compute_gradient_estimate(
        self,
        worker_weights: WorkerWeights,
        key: chex.PRNGKey,
        state: Any,
        with_summary: bool = False,
    ) -> tuple[GradientEstimatorOut, dict[str, jax.Array]]:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return f"{type(self).__name__}_{self.task_family.name}"


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of x over the entries where mask holds (0 where none does)."""
    total = jax.numpy.sum(jax.numpy.where(mask, x, 0.0), axis=axis)
    count = jax.numpy.sum(mask, axis=axis)
    return total / jax.numpy.maximum(count, 1)
