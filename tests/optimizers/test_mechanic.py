"""Mechanic: optax's memory-efficient version stalls in float32, ours does not.

optax.contrib.mechanize recomputes Delta_t = (x_ref - x_t) / s_t. With s_init = 1e-6 and
small base updates the first steps are below float32 resolution at |x| ~ 1, so x_t == x_ref,
Delta_t == 0 and s never grows. `meta_opt.optimizers.mechanize` stores Delta_t instead.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_opt.optimizers import MechanicConfig, SGDConfig, mechanize

CURV = np.logspace(-1, 0, 16)
OFFSET = 0.01 * np.random.default_rng(0).standard_normal(16)


def train(make, base, dtype, x0_value=1.0, steps=200):
    """Runs `make(base)` on 0.5 sum a (x - x*)^2 from x0 = x0_value; returns losses, state."""
    curv = jnp.asarray(CURV, dtype)
    x0 = jnp.full(16, x0_value, dtype)
    target = x0 + jnp.asarray(OFFSET, dtype)
    loss = lambda x: 0.5 * jnp.sum(curv * (x - target) ** 2)
    tx = make(base)

    @jax.jit
    def go(x):
        def body(carry, _):
            x, state = carry
            value, g = jax.value_and_grad(loss)(x)
            updates, state = tx.update(g, state, x)
            return (optax.apply_updates(x, updates), state), value

        (x, state), losses = jax.lax.scan(body, (x, tx.init(x)), None, steps)
        return losses, loss(x), state

    return go(x0)


@pytest.fixture(scope="module")
def float32_runs():
    base = optax.sgd(1.0)
    return {
        "optax": train(optax.contrib.mechanize, base, jnp.float32),
        "ours": train(mechanize, base, jnp.float32),
    }


def test_optax_mechanize_stalls_in_float32_with_default_s_init(float32_runs):
    losses, final, state = float32_runs["optax"]
    # Not a single visible step: the scale is still exactly s_init.
    assert float(final) == float(losses[0])
    np.testing.assert_allclose(float(state.s.sum()), 1e-6, rtol=1e-5)


def test_our_mechanize_makes_progress_in_float32_with_the_same_defaults(float32_runs):
    losses, final, state = float32_runs["ours"]
    assert float(final) < float(losses[0]) / 100
    assert float(state.s.sum()) > 1e-3  # the scale grew by orders of magnitude


def test_matches_optax_in_float64_where_optax_is_exact():
    # With eps -> 0 optax's recomputed Delta equals our stored Delta up to rounding, so the
    # two implementations must agree (this pins that the algorithm is unchanged).
    with jax.enable_x64(True):
        base = optax.sgd(1.0, momentum=0.9)
        make = lambda eps: lambda b: optax.contrib.mechanize(b, eps=eps)
        ours = lambda eps: lambda b: mechanize(b, eps=eps)
        a = train(make(1e-14), base, jnp.float64, steps=40)
        b = train(ours(1e-14), base, jnp.float64, steps=40)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-7)
        np.testing.assert_allclose(a[2].s, b[2].s, rtol=1e-7)
        assert float(a[1]) < float(a[0][0]) / 10  # a trajectory worth comparing


def test_starts_from_the_params_seen_at_the_first_update():
    tx = mechanize(optax.sgd(1.0))
    state = tx.init(jnp.zeros(3))
    params = jnp.ones(3)  # e.g. pre-trained weights swapped in after init
    _, state = jax.jit(tx.update)(jnp.ones(3), state, params)
    np.testing.assert_array_equal(state.x0, params)


def test_bfloat16_params_keep_float32_scale_statistics():
    x = jnp.ones(4, jnp.bfloat16)
    tx = mechanize(optax.sgd(1.0))
    state = tx.init(x)
    updates, new_state = jax.jit(tx.update)(x, state, x)
    assert updates.dtype == jnp.bfloat16
    assert new_state.s.dtype == jnp.float32 and new_state.delta.dtype == jnp.bfloat16
    assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_config_wraps_the_nested_base_optimizer():
    cfg = MechanicConfig(base_optimizer=SGDConfig(learning_rate=1.0), weight_decay=0.0)
    x = jnp.asarray(np.linspace(0.5, 1.5, 16), jnp.float32)
    tx_cfg, tx_ref = cfg.make_jax(), mechanize(optax.sgd(1.0), weight_decay=0.0)
    ua, _ = jax.jit(tx_cfg.update)(x, tx_cfg.init(x), x)
    ub, _ = jax.jit(tx_ref.update)(x, tx_ref.init(x), x)
    np.testing.assert_array_equal(ua, ub)
