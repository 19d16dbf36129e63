"""Learned optimizers: theta layout, closed-form updates and differentiability in theta."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_opt.learned import AdafacMLPLOpt, LearnableAdam, LearnableSGD, LearnableSGDM, MLPLOpt
from meta_opt.learned.adafac_mlp_lopt import factored_second_moment
from meta_opt.learned.mlp_lopt import (
    apply_mlp,
    second_moment_normalizer,
    tanh_time_features,
)
from meta_opt.optimizers import Optimizer

# w[0, 0] = 0 has a zero gradient under sum(p^2): meta-gradients must stay finite there.
PARAMS = {"w": jnp.arange(6.0).reshape(2, 3) / 6.0, "b": jnp.array([0.5, -1.0, 2.0])}
GRADS = jax.tree_util.tree_map(lambda p: 0.3 * p - 0.1, PARAMS)


def test_learnable_adam_theta_keys_and_values_follow_seed_002():
    theta = LearnableAdam(initial_lr=1e-3).init(jax.random.PRNGKey(0))
    assert set(theta) == {"log_lr", "one_minus_beta1", "one_minus_beta2", "log_epsilon"}
    np.testing.assert_allclose(theta["log_lr"], np.log(1e-3), rtol=1e-6)
    np.testing.assert_allclose(theta["one_minus_beta1"], np.log(0.1), rtol=1e-6)
    np.testing.assert_allclose(theta["one_minus_beta2"], np.log(1e-3), rtol=1e-5)


def test_learnable_adam_equals_optax_adam_over_three_steps():
    lopt = LearnableAdam(initial_lr=0.05, initial_beta1=0.8, initial_beta2=0.99)
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    assert isinstance(opt, Optimizer)
    tx = optax.adam(0.05, b1=0.8, b2=0.99, eps=1e-8)
    state, ref_params, ref_state = opt.init(PARAMS), PARAMS, tx.init(PARAMS)
    for _ in range(3):
        state = opt.update(state, GRADS, loss=1.0)
        updates, ref_state = tx.update(GRADS, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, updates)
    jax.tree_util.tree_map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        opt.get_params(state),
        ref_params,
    )


@pytest.mark.parametrize("lopt", [LearnableSGD(0.1), LearnableSGDM(0.1, 0.5)])
def test_learnable_sgd_first_step_is_lr_times_grad(lopt):
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    new = opt.get_params(opt.update(opt.init(PARAMS), GRADS))
    jax.tree_util.tree_map(
        lambda n, p, g: np.testing.assert_allclose(n, p - 0.1 * g, rtol=1e-6), new, PARAMS, GRADS
    )


def test_mlp_lopt_step_is_direction_times_exp_magnitude_times_step_mult():
    # With zero weights the MLP outputs its last bias (d, m) for every parameter.
    lopt = MLPLOpt(hidden_size=4, hidden_layers=1, exp_mult=0.5, step_mult=0.1)
    theta = jax.tree_util.tree_map(jnp.zeros_like, lopt.init(jax.random.PRNGKey(0)))
    theta["mlp"][-1]["b"] = jnp.array([2.0, 3.0])
    opt = lopt.opt_fn(theta)
    new = opt.get_params(jax.jit(opt.update)(opt.init(PARAMS), GRADS))
    step = 2.0 * np.exp(3.0 * 0.5) * 0.1
    jax.tree_util.tree_map(
        lambda n, p: np.testing.assert_allclose(n, p - step, rtol=1e-6), new, PARAMS
    )


def test_mlp_lopt_momenta_follow_their_decays():
    lopt = MLPLOpt(momentum_decays=(0.0, 0.5, 0.9))
    opt = lopt.opt_fn(lopt.init(jax.random.PRNGKey(0)))
    update = jax.jit(opt.update)
    state = update(update(opt.init(PARAMS), GRADS), GRADS)
    g = np.asarray(GRADS["b"])
    expected = np.stack([(1 - d**2) * g for d in (0.0, 0.5, 0.9)], axis=-1)
    np.testing.assert_allclose(state.momentum["b"], expected, rtol=1e-6)
    assert int(state.iteration) == 2


def _reference_mlp_lopt_params(lopt, theta, state, grad):
    """The MLPLOpt step written per tensor, time features concatenated to every row."""
    new = {}
    for name, p in state.params.items():
        g = grad[name]
        m = (
            jnp.asarray(lopt.momentum_decays) * state.momentum[name]
            + (1.0 - jnp.asarray(lopt.momentum_decays)) * g[..., None]
        )
        acc = None if state.accumulators is None else state.accumulators[name]
        if acc is not None:
            acc = lopt.update_accumulators({name: acc}, {name: g})[name]
        feats = [p[..., None], g[..., None], m] + lopt.extra_features(g, m, acc)
        x = second_moment_normalizer(jnp.concatenate(feats, axis=-1))
        time = tanh_time_features(state.iteration)
        x = jnp.concatenate([x, jnp.broadcast_to(time, p.shape + time.shape)], axis=-1)
        out = apply_mlp(theta["mlp"], x)
        new[name] = p - out[..., 0] * jnp.exp(out[..., 1] * lopt.exp_mult) * lopt.step_mult
    return new


@pytest.mark.parametrize(
    "lopt", [MLPLOpt(exp_mult=0.3, step_mult=0.1), MLPLOpt(hidden_layers=0), AdafacMLPLOpt()]
)
def test_mlp_lopt_fused_update_equals_the_per_tensor_formula(lopt):
    # The update folds the time features into the first layer's bias and runs one MLP call
    # over all tensors; the per-tensor formula with concatenated time features is the spec.
    theta = lopt.init(jax.random.PRNGKey(4))
    opt = lopt.opt_fn(theta)
    update = jax.jit(opt.update)
    state = update(update(opt.init(PARAMS), GRADS), GRADS)  # nonzero momenta, iteration 2
    grad = jax.tree_util.tree_map(lambda g: -0.5 * g + 0.05, GRADS)
    expected = _reference_mlp_lopt_params(lopt, theta, state, grad)
    new = opt.get_params(update(state, grad))
    for name in PARAMS:
        np.testing.assert_allclose(new[name], expected[name], rtol=1e-5, atol=1e-7)
        assert not np.allclose(new[name], state.params[name], atol=1e-6)  # a real step


def test_second_moment_normalizer_gives_unit_mean_square_per_channel():
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 7, 3)) * jnp.array([0.3, 1.0, 100.0])
    ms = jnp.mean(jnp.square(second_moment_normalizer(x)), axis=(0, 1))
    np.testing.assert_allclose(ms, 1.0, rtol=1e-3)


def test_factored_second_moment_is_exact_for_rank_one_squares():
    r, c = jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 4.0])
    g2 = jnp.outer(r, c)  # rank one: row means x column means / overall mean reproduce it
    acc = {"row": jnp.mean(g2, axis=-1)[:, None], "col": jnp.mean(g2, axis=-2)[:, None]}
    np.testing.assert_allclose(factored_second_moment(acc)[..., 0], g2, rtol=1e-5)


@pytest.mark.parametrize("lopt", [MLPLOpt(), AdafacMLPLOpt(), LearnableAdam()])
def test_meta_gradient_through_two_updates_is_finite_and_nonzero(lopt):
    def meta_loss(theta):
        opt = lopt.opt_fn(theta)
        state = opt.init(PARAMS)
        for _ in range(2):
            params = opt.get_params(state)
            loss, grad = jax.value_and_grad(lambda p: sum(jnp.sum(x**2) for x in p.values()))(
                params
            )
            state = opt.update(state, grad, loss=loss)
        return sum(jnp.sum(x**2) for x in opt.get_params(state).values())

    grads = jax.jit(jax.grad(meta_loss))(lopt.init(jax.random.PRNGKey(1)))
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    assert sum(float(jnp.sum(jnp.abs(x))) for x in leaves) > 0


def test_bad_hyperparameters_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="initial_lr"):
        LearnableAdam(initial_lr=-1.0)
    with pytest.raises(ValueError, match="momentum_decays"):
        MLPLOpt(momentum_decays=(1.5,))
