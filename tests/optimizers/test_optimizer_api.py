"""The seed-002 Optimizer API flows (state owns params) and the optax bridge both ways.

Each test follows a code cell of the learned_optimization "Part 1" tutorial with only the
imports changed (a data-free quadratic task stands in for the Fashion-MNIST MLP), and pins
the result against a closed form or a second implementation.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_opt.optimizers import SGD, SGDM, Adam, OptaxOptimizer, Optimizer, to_optax
from meta_opt.tasks.quadratics import QuadraticTask


def test_sgd_init_holds_params_and_zero_iteration():
    fake_params = {"a": jnp.zeros((2,))}
    opt = SGD(1e-4)
    opt_state = opt.init(fake_params)
    np.testing.assert_array_equal(opt.get_params(opt_state)["a"], np.zeros(2))
    assert int(opt_state.iteration) == 0


def test_adam_one_step_moves_each_param_by_learning_rate():
    # First Adam step: m_hat = g, v_hat = g^2, so the step is lr * g / (|g| + eps) ~= lr.
    fake_params = {"a": jnp.zeros((2,))}
    opt = Adam(1e-4)
    opt_state = opt.init(fake_params)
    next_opt_state = opt.update(opt_state, {"a": jnp.ones((2,))}, 10.0)
    np.testing.assert_allclose(opt.get_params(next_opt_state)["a"], -1e-4 * np.ones(2), rtol=1e-5)
    assert int(next_opt_state.iteration) == 1


def test_adam_defaults_match_learned_optimization():
    opt = Adam()
    assert (opt.learning_rate, opt.beta1, opt.beta2, opt.epsilon) == (1e-4, 0.9, 0.999, 1e-8)


def test_python_training_loop_equals_plain_gradient_descent():
    task = QuadraticTask(dim=3)
    key = jax.random.PRNGKey(0)
    params = task.init(key)
    lr = 0.1
    opt = SGD(lr)
    opt_state = opt.init(params)
    expected = params
    for _ in range(3):
        key, key1 = jax.random.split(key)
        params = opt.get_params(opt_state)
        loss, grads = jax.value_and_grad(task.loss)(params, key1, None)
        opt_state = opt.update(opt_state, grads, loss)
        expected = expected - lr * 2 * expected  # d/dp sum(p^2) = 2p
    np.testing.assert_allclose(opt.get_params(opt_state), expected, rtol=1e-6)


def test_jitted_whole_update_matches_unjitted_and_decreases_loss():
    task = QuadraticTask(dim=4)
    key = jax.random.PRNGKey(0)
    opt = Adam(1e-2)
    opt_state = opt.init(task.init(key))

    def update(opt_state, key, batch):
        key, key1 = jax.random.split(key)
        params, model_state = opt.get_params_state(opt_state)
        assert model_state is None
        loss, grads = jax.value_and_grad(task.loss)(params, key1, batch)
        opt_state = opt.update(opt_state, grads, loss=loss)
        return opt_state, key, loss

    jitted = jax.jit(update)
    s_eager, s_jit, k_eager, k_jit = opt_state, opt_state, key, key
    losses = []
    for _ in range(5):
        s_eager, k_eager, _ = update(s_eager, k_eager, None)
        s_jit, k_jit, loss = jitted(s_jit, k_jit, None)
        losses.append(float(loss))
    np.testing.assert_allclose(opt.get_params(s_jit), opt.get_params(s_eager), rtol=1e-6)
    assert losses[-1] < losses[0]


def test_get_params_state_returns_model_state_and_update_replaces_it():
    opt = SGD(0.5)
    opt_state = opt.init({"w": jnp.ones(2)}, model_state={"count": jnp.asarray(0)})
    params, state = opt.get_params_state(opt_state)
    assert int(state["count"]) == 0
    kept = opt.update(opt_state, {"w": jnp.ones(2)}, loss=1.0)
    assert int(opt.get_state(kept)["count"]) == 0  # no new model state: the old one stays
    new = opt.update(opt_state, {"w": jnp.ones(2)}, model_state={"count": jnp.asarray(7)})
    assert int(opt.get_state(new)["count"]) == 7
    np.testing.assert_allclose(opt.get_params(new)["w"], [0.5, 0.5])


def test_set_params_replaces_params_only():
    opt = SGDM(0.1, 0.9)
    opt_state = opt.update(opt.init({"w": jnp.zeros(2)}), {"w": jnp.ones(2)})
    moved = opt.set_params(opt_state, {"w": jnp.full((2,), 3.0)})
    np.testing.assert_array_equal(opt.get_params(moved)["w"], [3.0, 3.0])
    assert int(moved.iteration) == 1


# --- custom Optimizer subclass, exactly as in the seed --------------------------------------


@flax.struct.dataclass
class MomentumOptState:
    params: Any
    model_state: Any
    iteration: jnp.ndarray
    momentums: Any


class MomentumOptimizer(Optimizer):
    def __init__(self, lr=1e-3, momentum=0.9):
        super().__init__()
        self._lr = lr
        self._momentum = momentum

    def get_state(self, opt_state):
        return opt_state.model_state

    def get_params(self, opt_state):
        return opt_state.params

    def init(self, params, model_state=None, **kwargs):
        return MomentumOptState(
            params=params,
            model_state=model_state,
            momentums=jax.tree_util.tree_map(jnp.zeros_like, params),
            iteration=jnp.asarray(0, dtype=jnp.int32),
        )

    def update(self, opt_state, grads, loss, model_state=None, **kwargs):
        struct = jax.tree_util.tree_structure(grads)
        flat_momentum = jax.tree_util.tree_leaves(opt_state.momentums)
        flat_grads = jax.tree_util.tree_leaves(grads)
        flat_params = jax.tree_util.tree_leaves(opt_state.params)

        output_params = []
        output_momentums = []
        for m, g, p in zip(flat_momentum, flat_grads, flat_params):  # noqa: B905 (seed code)
            next_m = m * self._momentum + g * (1 - self._momentum)
            next_p = p - next_m * self._lr
            output_params.append(next_p)
            output_momentums.append(next_m)
        return MomentumOptState(
            params=jax.tree_util.tree_unflatten(struct, output_params),
            model_state=model_state,
            iteration=opt_state.iteration + 1,
            momentums=jax.tree_util.tree_unflatten(struct, output_params),
        )


def test_custom_momentum_optimizer_from_seed():
    opt = MomentumOptimizer(lr=1)
    opt_state = opt.init({"a": 1.0, "b": 2.0})
    out = opt.update(opt_state, {"a": -1.0, "b": 1.0}, 1.0)
    # next_m = 0.1 * g; next_p = p - next_m.
    np.testing.assert_allclose(out.params["a"], 1.1, rtol=1e-6)
    np.testing.assert_allclose(out.params["b"], 1.9, rtol=1e-6)
    assert int(out.iteration) == 1
    params, state = opt.get_params_state(out)
    assert state is None and set(params) == {"a", "b"}


def test_custom_optimizer_works_through_to_optax():
    tx = to_optax(MomentumOptimizer(lr=1.0))
    params = {"a": jnp.asarray(1.0), "b": jnp.asarray(2.0)}
    state = tx.init(params)
    updates, _ = tx.update({"a": jnp.asarray(-1.0), "b": jnp.asarray(1.0)}, state, params)
    np.testing.assert_allclose(updates["a"], 0.1, rtol=1e-5)
    np.testing.assert_allclose(updates["b"], -0.1, rtol=1e-5)


# --- the optax bridge ------------------------------------------------------------------------


def _run_optax(tx, params, grads_seq):
    state = tx.init(params)
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def _grads_seq(n=4):
    keys = jax.random.split(jax.random.PRNGKey(3), n)
    return [{"w": jax.random.normal(k, (3,)), "b": jax.random.normal(k, ())} for k in keys]


def test_optax_optimizer_over_chain_equals_optax_directly():
    chain = optax.chain(optax.clip_by_global_norm(0.5), optax.scale_by_adam(), optax.scale(-0.1))
    params = {"w": jnp.arange(3.0), "b": jnp.asarray(1.0)}
    opt = OptaxOptimizer(chain)
    opt_state = opt.init(params)
    for g in _grads_seq():
        opt_state = opt.update(opt_state, g, loss=jnp.asarray(0.0))
    expected = _run_optax(chain, params, _grads_seq())
    got = opt.get_params(opt_state)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)
    assert int(opt_state.iteration) == 4


def test_optax_optimizer_passes_loss_as_value():
    # Polyak SGD needs the loss: step = min((f - f*) / ||g||^2, max_lr) * g.
    opt = OptaxOptimizer(optax.polyak_sgd(max_learning_rate=10.0))
    state = opt.init(jnp.asarray([3.0]))
    new = opt.update(state, jnp.asarray([6.0]), loss=jnp.asarray(9.0))
    np.testing.assert_allclose(opt.get_params(new), [3.0 - 9.0 / 36.0 * 6.0], rtol=1e-6)


@pytest.mark.parametrize("lr", [0.1, 0.03])
def test_to_optax_sgd_equals_optax_sgd(lr):
    params = {"w": jnp.arange(3.0), "b": jnp.asarray(1.0)}
    got = _run_optax(to_optax(SGD(lr)), params, _grads_seq())
    expected = _run_optax(optax.sgd(lr), params, _grads_seq())
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, expected)


def test_to_optax_round_trip_of_adam_equals_optax_adam():
    params = {"w": jnp.arange(3.0), "b": jnp.asarray(1.0)}
    got = _run_optax(to_optax(OptaxOptimizer(optax.adam(0.05))), params, _grads_seq())
    expected = _run_optax(optax.adam(0.05), params, _grads_seq())
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), got, expected)


def test_learnable_learning_rate_gives_meta_gradient_through_update():
    # Optimizers built from traced hyperparameters are differentiable (what opt_fn needs).
    task = QuadraticTask(dim=2)
    p0 = jnp.asarray([1.0, -2.0])

    def meta_loss(log_lr):
        opt = SGD(jnp.exp(log_lr))
        state = opt.init(p0)
        for _ in range(2):
            p = opt.get_params(state)
            loss, g = jax.value_and_grad(task.loss)(p, None, None)
            state = opt.update(state, g, loss)
        return task.loss(opt.get_params(state), None, None)

    log_lr = jnp.log(0.1)
    # Closed form: p2 = (1 - 2 lr)^2 p0, loss = (1 - 2 lr)^4 |p0|^2.
    lr = 0.1
    expected = 4 * (1 - 2 * lr) ** 3 * (-2 * lr) * float(jnp.sum(p0**2))
    np.testing.assert_allclose(jax.grad(meta_loss)(log_lr), expected, rtol=1e-5)
