"""GradientLearner arithmetic, NaN handling, worker compute, and the seed-001 flows."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.learned import LearnableAdam, LearnableSGD
from meta_opt.optimizers import SGD, Adam
from meta_opt.outer import (
    AggregatedGradient,
    ConstantTruncationSchedule,
    GradientEstimator,
    GradientEstimatorOut,
    GradientLearner,
    LogUniformLengthSchedule,
    SingleMachineGradientLearner,
    TruncatedPES,
    gradient_worker_compute,
)
from meta_opt.tasks.quadratics import FixedDimQuadraticFamily

from ._toy import ToyFamily


class FakeEstimator(GradientEstimator):
    """Returns a fixed gradient and loss, and counts its calls in its unroll state."""

    def __init__(self, grad, loss):
        self.grad, self.loss = grad, loss
        self.truncated_step = None

    @property
    def name(self):
        return "fake"

    def init_worker_state(self, worker_weights, key):
        return jnp.zeros((), jnp.int32)

    def compute_gradient_estimate(self, worker_weights, key, state, with_summary=False):
        out = GradientEstimatorOut(jnp.asarray(self.loss), self.grad, state + 1, None)
        return out, {"calls": state + 1}


def test_gradient_learner_applies_the_mean_gradient_exactly():
    learner = GradientLearner(LearnableSGD(0.1), SGD(0.5))
    state = learner.init(jax.random.PRNGKey(0))
    theta0 = learner.get_state_for_worker(state).theta["log_lr"]
    grads = [
        AggregatedGradient({"log_lr": jnp.asarray(g)}, None, jnp.asarray(loss))
        for g, loss in [(1.0, 3.0), (-3.0, 5.0)]
    ]
    state, metrics = learner.update(state, grads)
    theta1 = learner.get_state_for_worker(state).theta["log_lr"]
    np.testing.assert_allclose(theta1, theta0 - 0.5 * (1.0 - 3.0) / 2, rtol=1e-6)
    np.testing.assert_allclose(metrics["mean_loss"], 4.0)
    assert int(metrics["num_nonfinite_grads"]) == 0


def test_nan_gradients_are_zeroed_and_counted_not_propagated():
    learner = GradientLearner(LearnableSGD(0.1), optax.sgd(1.0))
    state = learner.init(jax.random.PRNGKey(0))
    theta0 = learner.get_theta(state)["log_lr"]
    bad = AggregatedGradient({"log_lr": jnp.asarray(jnp.nan)}, None, jnp.asarray(jnp.inf))
    good = AggregatedGradient({"log_lr": jnp.asarray(2.0)}, None, jnp.asarray(1.0))
    state, metrics = learner.update(state, [bad])
    assert int(metrics["num_nonfinite_grads"]) == 1
    assert int(metrics["num_nonfinite_losses"]) == 1
    np.testing.assert_array_equal(learner.get_theta(state)["log_lr"], theta0)
    # A NaN in the mean (one bad worker among good ones) is zeroed as a whole entry.
    state, metrics = learner.update(state, [good, bad])
    assert bool(jnp.isfinite(learner.get_theta(state)["log_lr"]))
    assert int(metrics["num_nonfinite_grads"]) == 1


def test_gradient_worker_compute_averages_estimators_and_advances_states():
    ests = [FakeEstimator({"log_lr": jnp.asarray(g)}, g * 10) for g in (1.0, 2.0, 6.0)]
    learner = GradientLearner(LearnableSGD(0.1), SGD(1.0))
    weights = learner.get_state_for_worker(learner.init(jax.random.PRNGKey(0)))
    states = [e.init_worker_state(weights, jax.random.PRNGKey(i)) for i, e in enumerate(ests)]
    out = gradient_worker_compute(weights, ests, states, jax.random.PRNGKey(0), True)
    np.testing.assert_allclose(out.to_put.theta_grads["log_lr"], 3.0)
    np.testing.assert_allclose(out.to_put.mean_loss, 30.0)
    assert [int(s) for s in out.unroll_states] == [1, 1, 1]
    assert set(out.metrics) == {"0_fake/calls", "1_fake/calls", "2_fake/calls"}


def test_seed_001_single_machine_learner_with_two_pes_estimators_runs_and_compiles_once():
    lopt = LearnableSGD(0.01)
    trunc_sched = LogUniformLengthSchedule(min_length=10, max_length=20)

    def grad_est_fn(task_family):
        return TruncatedPES(
            task_family=task_family,
            learned_opt=lopt,
            trunc_sched=trunc_sched,
            num_tasks=4,
            trunc_length=5,
            random_initial_iteration_offset=20,
        )

    gradient_estimators = [grad_est_fn(FixedDimQuadraticFamily(10)), grad_est_fn(ToyFamily())]
    outer_trainer = SingleMachineGradientLearner(lopt, gradient_estimators, Adam(1e-2))
    key = jax.random.PRNGKey(0)
    state = outer_trainer.init(key)
    theta0 = float(outer_trainer.get_theta(state)["log_lr"])
    for i in range(30):
        state, loss, metrics = outer_trainer.update(state, jax.random.PRNGKey(i))
    assert np.isfinite(float(loss)) and int(metrics["num_nonfinite_grads"]) == 0
    assert [e.trace_count for e in gradient_estimators] == [1, 1]
    # A learning rate of 0.01 is far too small on these quadratics: meta-training raises it.
    assert float(outer_trainer.get_theta(state)["log_lr"]) > theta0 + 0.1


def test_seed_001_manual_learner_worker_loop_matches_single_machine_learner():
    lopt = LearnableSGD(0.05)
    est = TruncatedPES(ToyFamily(), lopt, ConstantTruncationSchedule(12), 4, trunc_length=3)
    key = jax.random.PRNGKey(0)
    single = SingleMachineGradientLearner(lopt, [est], Adam(1e-2))
    s_state = single.init(key)

    central_learner = GradientLearner(lopt, Adam(1e-2))
    central_state = central_learner.init(key)
    worker_weights = central_learner.get_state_for_worker(central_state)
    unroll_states = [est.init_worker_state(worker_weights, key=jax.random.fold_in(key, 0))]
    for i in range(5):
        k = jax.random.PRNGKey(10 + i)
        worker_weights = central_learner.get_state_for_worker(central_state)
        out = gradient_worker_compute(worker_weights, [est], unroll_states, key=k)
        unroll_states = out.unroll_states
        central_state, _ = central_learner.update(central_state, [out.to_put])
        s_state, _, _ = single.update(s_state, k)
    np.testing.assert_allclose(
        central_learner.get_theta(central_state)["log_lr"],
        single.get_theta(s_state)["log_lr"],
        rtol=1e-6,
    )


class KeyRecordingEstimator(FakeEstimator):
    """Returns the key it was given as its 'gradient', so tests can see what each step drew."""

    def compute_gradient_estimate(self, worker_weights, key, state, with_summary=False):
        grad = {"log_lr": jax.random.normal(key, ())}
        return GradientEstimatorOut(jnp.asarray(0.0), grad, state + 1, None), {}


def test_fixed_key_still_gives_each_meta_step_its_own_randomness_in_both_seed_flows():
    lopt, key = LearnableSGD(0.1), jax.random.PRNGKey(0)
    single = SingleMachineGradientLearner(lopt, [KeyRecordingEstimator(None, 0.0)], SGD(0.0))
    state, draws = single.init(key), []
    for _ in range(4):
        weights = single.gradient_learner.get_state_for_worker(state.gradient_learner_state)
        out = gradient_worker_compute(
            weights, single.gradient_estimators, state.gradient_estimator_states, key
        )
        draws.append(float(out.to_put.theta_grads["log_lr"]))
        state, _, _ = single.update(state, key)  # the seed's loop: the same key every time
    assert len(set(draws)) == 4, draws
    # The manual central-learner / worker loop with a fixed key sees the same draws.
    learner = GradientLearner(lopt, SGD(0.0))
    central, manual = learner.init(key), []
    est = KeyRecordingEstimator(None, 0.0)
    for _ in range(4):
        out = gradient_worker_compute(learner.get_state_for_worker(central), [est], [0], key)
        manual.append(float(out.to_put.theta_grads["log_lr"]))
        central, _ = learner.update(central, [out.to_put])
    assert manual == draws
    assert int(central.outer_iteration) == 4


def _pes_seed001_loop(state, trainer, key, steps):
    batch_means, grads = [], []
    for _ in range(steps):
        weights = trainer.gradient_learner.get_state_for_worker(state.gradient_learner_state)
        out = gradient_worker_compute(
            weights, trainer.gradient_estimators, state.gradient_estimator_states, key
        )
        grads.append(np.asarray(jax.flatten_util.ravel_pytree(out.to_put.theta_grads)[0]))
        state, _, metrics = trainer.update(state, key, with_metrics=True)
        batch_means.append(float(metrics["1_TruncatedPES_BatchMeanOnly/mean_loss"]))
    return state, batch_means, np.stack(grads)


def test_seed001_pes_loop_with_fixed_key_sees_new_batches_and_perturbations_and_replays():
    """The seed-001 loop (one key for every update): batches and perturbations are fresh at
    every meta-step, and re-running from the same state with the same key is bit-identical.
    Theta is frozen (SGD(0)), so only the drawn data and perturbations vary."""
    import jax.flatten_util  # noqa: F401 - ravel_pytree

    from ._toy import BatchMeanFamily

    lopt = LearnableAdam(0.05)  # theta has 4 entries

    def grad_est_fn(family):
        return TruncatedPES(
            family, lopt, ConstantTruncationSchedule(1000), num_tasks=2, trunc_length=2, std=0.05
        )

    ests = [grad_est_fn(BatchMeanFamily()), grad_est_fn(BatchMeanFamily(params_matter=False))]
    trainer = SingleMachineGradientLearner(lopt, ests, SGD(0.0))
    key = jax.random.PRNGKey(0)
    start = trainer.init(key)
    end, batch_means, grads = _pes_seed001_loop(start, trainer, key, 6)
    # Batches: the second family's meta-loss is the mean of the step's batches alone.
    assert len(set(batch_means)) == 6, batch_means
    # Perturbations: with one draw per task repeated, every PES gradient would lie in the
    # span of the 2 tasks' perturbations; fresh draws span all of theta's 4 dimensions.
    assert np.linalg.matrix_rank(grads, tol=1e-6 * np.abs(grads).max()) == 4
    again, batch_means2, grads2 = _pes_seed001_loop(start, trainer, key, 6)
    assert batch_means2 == batch_means
    np.testing.assert_array_equal(grads2, grads)
    jax.tree_util.tree_map(np.testing.assert_array_equal, again, end)
    assert [e.trace_count for e in ests] == [1, 1]
