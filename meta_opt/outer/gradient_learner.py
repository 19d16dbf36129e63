"""Meta-training loops: the central `GradientLearner`, worker computation, one-machine driver.

The split follows what must travel in distributed meta-training. The central learner
holds theta and the meta-optimizer state; workers receive only `WorkerWeights` (theta)
and return only an `AggregatedGradient` (mean gradient and loss), keeping their unroll
states to themselves. `SingleMachineGradientLearner` runs both roles in one process.

`GradientLearner.update` averages the gradients it receives, replaces non-finite
entries with zeros (one bad inner run must not poison theta) and reports how many it
replaced, then takes one meta-optimizer step.

Fresh randomness per meta-step: learned_optimization's tasks draw their batches from
Python iterators, so a loop that passes one fixed key to every meta-step still trains on
new batches. Here batches (and ES / PES perturbations) are drawn from the key, so the
learner counts its meta-steps (`GradientLearnerState.outer_iteration`), sends the count
to workers in `WorkerWeights.outer_state`, and `gradient_worker_compute` folds it into
the key. Each meta-step therefore sees new batches and perturbations even under a fixed
key, and a run stays a pure function of (key, state): re-running from a saved state with
the same key reproduces it exactly.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022 (learned_optimization's gradient_learner).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import optax

from meta_opt.learned.base import LearnedOptimizer, MetaParams
from meta_opt.optimizers.optimizer import OptaxOptimizer, Optimizer
from meta_opt.outer.gradient_estimator import GradientEstimator, WorkerWeights


@flax.struct.dataclass
class OuterState:
    """What workers learn about the learner besides theta: the meta-step they compute for."""

    outer_iteration: jax.Array


@flax.struct.dataclass
class GradientLearnerState:
    """The central learner's state: the meta-optimizer state (which owns theta) and the
    number of meta-steps applied so far."""

    theta_opt_state: Any
    outer_iteration: jax.Array


@flax.struct.dataclass
class AggregatedGradient:
    """What a worker sends back: mean meta-gradient and mean meta-loss."""

    theta_grads: MetaParams
    theta_model_state: Any
    mean_loss: jax.Array


@flax.struct.dataclass
class WorkerComputeOut:
    """Result of `gradient_worker_compute`: `to_put` goes to the learner."""

    to_put: AggregatedGradient
    unroll_states: list
    metrics: dict
    event_info: list


@flax.struct.dataclass
class SingleMachineState:
    """Learner state plus the unroll state of every gradient estimator."""

    gradient_learner_state: GradientLearnerState
    gradient_estimator_states: list


def as_theta_optimizer(theta_opt: Optimizer | optax.GradientTransformation) -> Optimizer:
    """Accepts a meta_opt `Optimizer` or any optax transformation for theta."""
    if isinstance(theta_opt, Optimizer):
        return theta_opt
    if isinstance(theta_opt, optax.GradientTransformation):
        return OptaxOptimizer(theta_opt)
    raise TypeError(
        f"theta_opt must be a meta_opt.optimizers.Optimizer or an optax transformation, "
        f"got {type(theta_opt).__name__}"
    )


def zero_nonfinite(tree: Any) -> tuple[Any, jax.Array]:
    """(tree with NaN/inf entries replaced by 0, number of replaced entries)."""
    leaves = jax.tree_util.tree_leaves(tree)
    count = sum(jnp.sum(~jnp.isfinite(x)) for x in leaves) if leaves else jnp.asarray(0)
    clean = jax.tree_util.tree_map(lambda x: jnp.where(jnp.isfinite(x), x, 0.0), tree)
    return clean, jnp.asarray(count, jnp.int32)


class GradientLearner:
    """Holds theta and its optimizer; applies averaged gradients from workers.

    Args:
      meta_init: the learned optimizer (its `init` draws the initial theta).
      theta_opt: optimizer of theta (`meta_opt.optimizers.Adam(1e-3)` or an optax one).
    """

    def __init__(
        self, meta_init: LearnedOptimizer, theta_opt: Optimizer | optax.GradientTransformation
    ):
        self.meta_init = meta_init
        self.theta_opt = as_theta_optimizer(theta_opt)
        self._update = jax.jit(self._update_impl)

    def init(self, key: chex.PRNGKey) -> GradientLearnerState:
        """A fresh learner state: theta drawn from `key`, no meta-step applied yet."""
        theta = self.meta_init.init(key)
        return GradientLearnerState(
            theta_opt_state=self.theta_opt.init(theta),
            outer_iteration=jnp.asarray(0, jnp.int32),
        )

    def get_state_for_worker(self, state: GradientLearnerState) -> WorkerWeights:
        """What a worker needs: theta and the learner's meta-step (`OuterState`)."""
        return WorkerWeights(
            theta=self.theta_opt.get_params(state.theta_opt_state),
            theta_model_state=None,
            outer_state=OuterState(outer_iteration=state.outer_iteration),
        )

    def get_theta(self, state: GradientLearnerState) -> MetaParams:
        """Theta, the current meta-parameters."""
        return self.theta_opt.get_params(state.theta_opt_state)

    def _update_impl(self, state, grads_list):
        grads = jax.tree_util.tree_map(
            lambda *g: jnp.mean(jnp.stack(g), axis=0), *[g.theta_grads for g in grads_list]
        )
        losses = jnp.stack([jnp.asarray(g.mean_loss, jnp.float32) for g in grads_list])
        grads, num_nonfinite = zero_nonfinite(grads)
        loss = jnp.mean(jnp.where(jnp.isfinite(losses), losses, 0.0))
        theta_opt_state = self.theta_opt.update(state.theta_opt_state, grads, loss=loss)
        metrics = {
            "mean_loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "num_nonfinite_grads": num_nonfinite,
            "num_nonfinite_losses": jnp.sum(~jnp.isfinite(losses)),
        }
        new_state = GradientLearnerState(
            theta_opt_state=theta_opt_state, outer_iteration=state.outer_iteration + 1
        )
        return new_state, metrics

    def update(
        self,
        state: GradientLearnerState,
        grads_list: Sequence[AggregatedGradient],
        with_metrics: bool = False,
        key: chex.PRNGKey | None = None,
    ) -> tuple[GradientLearnerState, dict[str, jax.Array]]:
        """One meta-optimizer step on the mean of `grads_list` (non-finite entries zeroed)."""
        del with_metrics, key
        if not grads_list:
            raise ValueError("GradientLearner.update needs at least one gradient; got none")
        return self._update(state, list(grads_list))


def meta_step_key(key: chex.PRNGKey, worker_weights: WorkerWeights) -> chex.PRNGKey:
    """`key` folded with the learner's meta-step from `worker_weights.outer_state`.

    Weights without an `outer_state` (built by hand) leave the key as it is.
    """
    outer = worker_weights.outer_state
    if outer is None:
        return key
    return jax.random.fold_in(key, jnp.asarray(outer.outer_iteration, jnp.int32))


def gradient_worker_compute(
    worker_weights: WorkerWeights,
    gradient_estimators: Sequence[GradientEstimator],
    unroll_states: Sequence[Any],
    key: chex.PRNGKey,
    with_metrics: bool = False,
) -> WorkerComputeOut:
    """Runs every estimator once and averages their gradients and losses.

    Args:
      worker_weights: theta from `GradientLearner.get_state_for_worker`.
      gradient_estimators: the estimators this worker runs.
      unroll_states: one state per estimator (from `init_worker_state` or the last call).
      key: randomness; folded with the learner's meta-step (`meta_step_key`), then
        estimator i uses `fold_in(that key, i)`. A fixed key thus still gives every
        meta-step fresh batches and perturbations.
      with_metrics: also return each estimator's metrics (prefixed by its name).
    """
    if len(gradient_estimators) != len(unroll_states):
        raise ValueError(
            f"got {len(gradient_estimators)} gradient estimators but {len(unroll_states)} "
            "unroll states; pass one state per estimator"
        )
    key = meta_step_key(key, worker_weights)
    grads, losses, states, metrics, infos = [], [], [], {}, []
    for i, (est, state) in enumerate(zip(gradient_estimators, unroll_states, strict=True)):
        out, est_metrics = est.compute_gradient_estimate(
            worker_weights, jax.random.fold_in(key, i), state, with_summary=with_metrics
        )
        grads.append(out.grad)
        losses.append(out.mean_loss)
        states.append(out.unroll_state)
        infos.append(out.unroll_info)
        if with_metrics:
            for name, value in est_metrics.items():
                metrics[f"{i}_{est.name}/{name}"] = value
    theta_grads = jax.tree_util.tree_map(lambda *g: sum(g) / len(g), *grads)
    to_put = AggregatedGradient(
        theta_grads=theta_grads,
        theta_model_state=worker_weights.theta_model_state,
        mean_loss=sum(losses) / len(losses),
    )
    return WorkerComputeOut(to_put=to_put, unroll_states=states, metrics=metrics, event_info=infos)


class SingleMachineGradientLearner:
    """Meta-trains `meta_init` with `gradient_estimators` in this process.

    Args:
      meta_init: the learned optimizer.
      gradient_estimators: estimators whose gradients are averaged each meta-step.
      theta_opt: optimizer of theta.
    """

    def __init__(
        self,
        meta_init: LearnedOptimizer,
        gradient_estimators: Sequence[GradientEstimator],
        theta_opt: Optimizer | optax.GradientTransformation,
    ):
        if not gradient_estimators:
            raise ValueError("SingleMachineGradientLearner needs at least one gradient estimator")
        self.gradient_learner = GradientLearner(meta_init, theta_opt)
        self.gradient_estimators = list(gradient_estimators)

    def init(self, key: chex.PRNGKey) -> SingleMachineState:
        """Theta and every estimator's unroll state (estimator i from `fold_in(key, i)`)."""
        learner_state = self.gradient_learner.init(key)
        weights = self.gradient_learner.get_state_for_worker(learner_state)
        states = [
            est.init_worker_state(weights, key=jax.random.fold_in(key, i))
            for i, est in enumerate(self.gradient_estimators)
        ]
        return SingleMachineState(learner_state, states)

    def get_theta(self, state: SingleMachineState) -> MetaParams:
        """Theta, the current meta-parameters."""
        return self.gradient_learner.get_theta(state.gradient_learner_state)

    def update(
        self, state: SingleMachineState, key: chex.PRNGKey, with_metrics: bool = False
    ) -> tuple[SingleMachineState, jax.Array, dict[str, jax.Array]]:
        """One meta-step: estimate on every estimator, then update theta.

        `key` may be the same at every call: the learner's meta-step is folded into it
        (see `gradient_worker_compute`), so each meta-step sees fresh batches and
        perturbations.
        """
        weights = self.gradient_learner.get_state_for_worker(state.gradient_learner_state)
        out = gradient_worker_compute(
            weights,
            self.gradient_estimators,
            state.gradient_estimator_states,
            key=key,
            with_metrics=with_metrics,
        )
        learner_state, metrics = self.gradient_learner.update(
            state.gradient_learner_state, [out.to_put], with_metrics=with_metrics
        )
        metrics = {**out.metrics, **metrics}
        return SingleMachineState(learner_state, out.unroll_states), out.to_put.mean_loss, metrics
