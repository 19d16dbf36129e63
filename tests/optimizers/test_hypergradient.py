"""SGD-HD and Adam-HD against trajectories written by hand from the paper's algorithms."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_opt.optimizers import AdamHDConfig, HypergradientState, SGDHDConfig, adam_hd, sgd_hd

CURV = np.array([0.2, 0.5, 1.0, 0.7])
TARGET = np.array([1.0, -2.0, 0.5, 3.0])
X0 = np.array([0.3, 0.1, -0.4, 1.2])


def grad_np(x):
    return CURV * (x - TARGET)


def loss_jnp(x):
    curv, target = jnp.asarray(CURV, jnp.float32), jnp.asarray(TARGET, jnp.float32)
    return 0.5 * jnp.sum(curv * (x - target) ** 2)


def sgd_hd_by_hand(alpha, beta, steps):
    """Baydin et al. 2018, Algorithm 1, in float64 numpy."""
    x, prev_g, out = X0.copy(), np.zeros_like(X0), []
    for _ in range(steps):
        g = grad_np(x)
        alpha = alpha + beta * g @ prev_g
        x = x - alpha * g
        prev_g = g
        out.append((x.copy(), alpha))
    return out


def adam_hd_by_hand(alpha, beta, b1, b2, eps, steps):
    """Baydin et al. 2018, Algorithm 3, in float64 numpy."""
    x, m, v, prev_d, out = X0.copy(), 0 * X0, 0 * X0, 0 * X0, []
    for t in range(1, steps + 1):
        g = grad_np(x)
        alpha = alpha + beta * g @ prev_d
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        d = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        x = x - alpha * d
        prev_d = d
        out.append((x.copy(), alpha))
    return out


def run(tx, steps):
    x = jnp.asarray(X0, jnp.float32)
    state = tx.init(x)
    step = jax.jit(lambda x, s: _step(tx, x, s))
    out = []
    for _ in range(steps):
        x, state = step(x, state)
        out.append((np.asarray(x), float(state.learning_rate)))
    return out, state


def _step(tx, x, state):
    updates, state = tx.update(jax.grad(loss_jnp)(x), state, x)
    return optax.apply_updates(x, updates), state


def _assert_same(got, expected):
    for (x, a), (x_ref, a_ref) in zip(got, expected, strict=True):
        np.testing.assert_allclose(a, a_ref, rtol=1e-5)
        np.testing.assert_allclose(x, x_ref, rtol=1e-5, atol=1e-6)


def test_sgd_hd_matches_hand_computed_trajectory():
    got, state = run(sgd_hd(learning_rate=0.3, hyper_lr=0.05), 3)
    expected = sgd_hd_by_hand(0.3, 0.05, 3)
    assert expected[2][1] != pytest.approx(0.3, rel=1e-2)  # alpha really moved
    _assert_same(got, expected)
    assert isinstance(state, HypergradientState) and state.learning_rate.dtype == jnp.float32


def test_adam_hd_matches_hand_computed_trajectory():
    got, _ = run(adam_hd(learning_rate=0.1, hyper_lr=0.02, b1=0.8, b2=0.95, eps=1e-6), 3)
    expected = adam_hd_by_hand(0.1, 0.02, 0.8, 0.95, 1e-6, 3)
    assert expected[2][1] != pytest.approx(0.1, rel=1e-2)
    _assert_same(got, expected)


def test_sgd_hd_learning_rate_grows_linearly_under_a_constant_gradient():
    # f(x) = c . x: g_t . g_{t-1} = |c|^2 from the second step on.
    c = jnp.array([1.0, -2.0, 0.5])
    tx = sgd_hd(learning_rate=0.1, hyper_lr=0.01)
    state = tx.init(jnp.zeros(3))
    for _ in range(4):
        _, state = tx.update(c, state, jnp.zeros(3))
    np.testing.assert_allclose(float(state.learning_rate), 0.1 + 3 * 0.01 * 5.25, rtol=1e-6)


def test_sgd_hd_learning_rate_shrinks_when_steps_overshoot():
    # lr 2.5 > 2 / L on f = 0.5 x^2: successive gradients flip sign, so alpha must fall.
    tx = sgd_hd(learning_rate=2.5, hyper_lr=0.1)
    x, state = jnp.ones(2), tx.init(jnp.ones(2))
    for _ in range(3):
        updates, state = tx.update(x, state, x)
        x = x + updates
    assert float(state.learning_rate) < 2.5


@pytest.mark.parametrize(
    "hd, reference",
    [
        (sgd_hd(0.3, hyper_lr=0.0), optax.sgd(0.3)),
        (adam_hd(0.1, hyper_lr=0.0), optax.adam(0.1)),
    ],
)
def test_zero_hyper_lr_is_the_plain_optimizer(hd, reference):
    x = jnp.asarray(X0, jnp.float32)
    xs = [x, x]
    states = [hd.init(x), reference.init(x)]
    for _ in range(3):
        for i, tx in enumerate((hd, reference)):
            xs[i], states[i] = _step(tx, xs[i], states[i])
    np.testing.assert_allclose(xs[0], xs[1], rtol=1e-6)


def test_bfloat16_params_keep_a_float32_learning_rate_and_bfloat16_updates():
    x = jnp.ones(3, jnp.bfloat16)
    for tx in (sgd_hd(), adam_hd()):
        state = tx.init(x)
        updates, new_state = tx.update(x, state, x)
        assert updates.dtype == jnp.bfloat16
        assert new_state.learning_rate.dtype == jnp.float32
        assert jax.tree.structure(new_state) == jax.tree.structure(state)


def test_configs_build_the_same_transformations():
    x = jnp.asarray(X0, jnp.float32)
    for cfg, tx in [
        (SGDHDConfig(learning_rate=0.3, hyper_lr=0.05), sgd_hd(0.3, 0.05)),
        (AdamHDConfig(learning_rate=0.1, hyper_lr=0.02, b1=0.8), adam_hd(0.1, 0.02, b1=0.8)),
    ]:
        a, _ = _step(cfg.make_jax(), x, cfg.make_jax().init(x))
        b, _ = _step(tx, x, tx.init(x))
        np.testing.assert_array_equal(a, b)
