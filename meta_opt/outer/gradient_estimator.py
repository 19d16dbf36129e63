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
import jax.numpy as jnp

from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.outer.truncated_step import VectorizedTruncatedStep, tile_theta
from meta_opt.outer.truncation_schedules import TruncationSchedule
from meta_opt.tasks.base import TaskFamily

# Whole-run estimators scan trunc_sched.max_length steps; beyond this it is surely a mistake.
MAX_WHOLE_RUN_LENGTH = 100_000


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
    def task_family(self) -> TaskFamily:
        """The family whose sampled tasks the inner runs train."""
        return self.truncated_step.task_family

    @property
    def learned_opt(self) -> LearnedOptimizer:
        """The learned optimizer whose theta the estimate is a gradient for."""
        return self.truncated_step.learned_opt

    def init_worker_state(self, worker_weights: WorkerWeights, key: chex.PRNGKey) -> Any:
        """The unroll state a worker keeps between estimates, built once per worker.

        Truncated estimators start `num_tasks` inner runs here (and PES its perturbation
        accumulators); whole-run estimators keep nothing.

        Args:
          worker_weights: theta (and outer state) from the learner.
          key: PRNG key of the tasks sampled and their initial parameters.

        Returns:
          A pytree to pass to the first `compute_gradient_estimate`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement init_worker_state")

    def compute_gradient_estimate(
        self,
        worker_weights: WorkerWeights,
        key: chex.PRNGKey,
        state: Any,
        with_summary: bool = False,
    ) -> tuple[GradientEstimatorOut, dict[str, jax.Array]]:
        """One meta-gradient estimate at theta, advancing the inner runs.

        One jitted call: the unroll (and, for ES/PES, its antithetic copies) and the
        estimate. The learner averages the `grad` of several such outputs.

        Args:
          worker_weights: theta (and outer state) from the learner.
          key: PRNG key of this estimate (perturbations, batches, restarted tasks).
          state: the unroll state from `init_worker_state` or the previous estimate.
          with_summary: kept for learned_optimization's signature; the built-in
            estimators always return their (cheap, scalar) metrics.

        Returns:
          `(out, metrics)`: `out.mean_loss`, `out.grad` (theta's structure) and
          `out.unroll_state` for the next call; `metrics` a dict of scalars for logging.
        """
        raise NotImplementedError(
            f"{type(self).__name__} must implement compute_gradient_estimate"
        )

    @property
    def name(self) -> str:
        """`{Estimator}_{family}`, e.g. `TruncatedPES_ImageMLPFamily_Digits8_32`.

        `SingleMachineGradientLearner` keys each estimator's metrics by it
        (`{i}_{name}/mean_loss`), so several estimators over different families log side
        by side.
        """
        return f"{type(self).__name__}_{self.task_family.name}"


class UnrollingEstimator(GradientEstimator):
    """The shared construction of the built-in estimators (ES, PES and the autodiff ones).

    One `__init__` validates the arguments, builds the `VectorizedTruncatedStep`, and jits
    the subclass's `_estimate_impl(theta, state, key, data)` once, counting its traces in
    `trace_count`. Truncated estimators pass `trunc_length` (steps per estimate); whole-run
    estimators pass `whole_runs=True` and unroll `trunc_sched.max_length` steps from fresh
    runs each time, keeping no state. Estimators that perturb theta pass `std`.
    `_init_impl(theta, key)` builds the unroll state (default: fresh runs, one per task).
    """

    def __init__(
        self,
        task_family: TaskFamily,
        learned_opt: LearnedOptimizer,
        trunc_sched: TruncationSchedule,
        num_tasks: int,
        *,
        trunc_length: int | None = None,
        whole_runs: bool = False,
        std: float | None = None,
        random_initial_iteration_offset: int = 0,
        meta_loss_split: str | None = None,
        truncated_alternative: str = "TruncatedPES",
    ):
        name = type(self).__name__
        if whole_runs:
            if trunc_sched.max_length > MAX_WHOLE_RUN_LENGTH:
                raise ValueError(
                    f"{name} unrolls whole runs; trunc_sched.max_length="
                    f"{trunc_sched.max_length} is too long (use a finite schedule or "
                    f"{truncated_alternative})"
                )
            self.unroll_length = int(trunc_sched.max_length)
        else:
            if trunc_length is None or int(trunc_length) < 1:
                raise ValueError(f"{name} needs trunc_length >= 1, got {trunc_length}")
            self.trunc_length = self.unroll_length = int(trunc_length)
        if std is not None:
            if not std > 0:
                raise ValueError(f"{name} needs std > 0, got {std}")
            self.std = float(std)
        self.whole_runs = whole_runs
        self.truncated_step = VectorizedTruncatedStep(
            task_family,
            learned_opt,
            trunc_sched,
            num_tasks,
            random_initial_iteration_offset=random_initial_iteration_offset,
            meta_loss_split=meta_loss_split,
        )
        self.trace_count = 0
        self._init = jax.jit(self._init_impl)
        self._estimate = jax.jit(self._counted_estimate)

    def _init_impl(self, theta: MetaParams, key: chex.PRNGKey) -> Any:
        step = self.truncated_step
        return step.init_step_state(tile_theta(theta, step.num_tasks), key)

    def _counted_estimate(self, theta, state, key, data):
        self.trace_count += 1  # runs only while jax traces: counts compilations
        return self._estimate_impl(theta, state, key, data)

    def _estimate_impl(self, theta, state, key, data):
        raise NotImplementedError(f"{type(self).__name__} must implement _estimate_impl")

    def init_worker_state(self, worker_weights: WorkerWeights, key: chex.PRNGKey) -> Any:
        if self.whole_runs:
            del key
            return jnp.zeros((), jnp.int32)  # whole-run estimators keep no state
        return self._init(worker_weights.theta, key)

    def compute_gradient_estimate(
        self,
        worker_weights: WorkerWeights,
        key: chex.PRNGKey,
        state: Any,
        with_summary: bool = False,
    ) -> tuple[GradientEstimatorOut, dict[str, jax.Array]]:
        del with_summary  # metrics are cheap scalars; always returned
        data = self.truncated_step.get_data(self.unroll_length)
        return self._estimate(worker_weights.theta, state, key, data)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
    """Mean of x over the entries where mask holds (0 where none does)."""
    total = jax.numpy.sum(jax.numpy.where(mask, x, 0.0), axis=axis)
    count = jax.numpy.sum(mask, axis=axis)
    return total / jax.numpy.maximum(count, 1)
