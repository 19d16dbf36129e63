"""MetaOpt's reductions, representability, learning and robustness (docs/metaopt.md)."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import enable_x64
from jax.flatten_util import ravel_pytree

from meta_opt.optimizers import metaopt, reset_for_new_episode


class Quadratic(flax.struct.PyTreeNode):
    """f(x) = 0.5 sum a (x - b)^2 over the flattened params; b plays the batch."""

    a: jax.Array
    b: jax.Array

    def __call__(self, params):
        x, _ = ravel_pytree(params)
        return 0.5 * jnp.sum(self.a * (x - self.b) ** 2)


def _params(n=6, dtype=jnp.float32):
    return {"w": jnp.zeros((n - 2,), dtype), "b": jnp.zeros((2,), dtype)}


def _scan(tx, params, costs, steps):
    """Jitted lax.scan of `steps` updates; costs: a Quadratic whose leaves have a leading
    step axis. Returns (params, state), (losses, updates)."""

    def step(carry, f):
        p, s = carry
        loss, g = jax.value_and_grad(f)(p)
        u, s = tx.update(g, s, p, cost_fn=f)
        return (optax.apply_updates(p, u), s), (loss, u)

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), costs, length=steps))
    return run(params)


def _costs(steps, n=6, lo=-1, hi=0, seed=0, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    a = np.broadcast_to(np.logspace(lo, hi, n), (steps, n))
    b = 1.0 + 0.1 * rng.standard_normal((steps, n))
    return Quadratic(jnp.asarray(a, dtype), jnp.asarray(b, dtype))


@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
def test_zero_frozen_controller_is_sgd_with_weight_decay(m_method):
    eta, lam, steps = 0.1, 0.01, 50
    tx = metaopt(eta, weight_decay=lam, scale_by_adam_betas=None, H=3, HH=2,
                 m_method=m_method, freeze_gpc_params=True, initial_m0=0.0)
    costs = _costs(steps)
    _, (_, updates) = _scan(tx, _params(), costs, steps)
    # Reference: SGD with decoupled weight decay along the same trajectory.
    p = _params()
    for s in range(steps):
        f = jax.tree.map(lambda c: c[s], costs)  # noqa: B023
        ref = jax.tree.map(lambda x, g: -lam * x - eta * g, p, jax.grad(f)(p))
        got = jax.tree.map(lambda u: u[s], updates)  # noqa: B023
        np.testing.assert_allclose(ravel_pytree(got)[0], ravel_pytree(ref)[0], atol=1e-7)
        p = optax.apply_updates(p, got)


def test_one_lag_controller_is_sgd_with_larger_learning_rate():
    """H=1, M_0 = -a: x_{t+1} = x_t - (eta + a) g_t."""
    with enable_x64():
        eta, a, steps = 0.05, 0.3, 30
        tx = metaopt(eta, scale_by_adam_betas=None, H=1, HH=1, freeze_gpc_params=True,
                     initial_gpc_params=np.array([-a]), dtype=jnp.float64)
        costs = _costs(steps, dtype=jnp.float64)
        (p, _), _ = _scan(tx, _params(dtype=jnp.float64), costs, steps)
        (p_ref, _), _ = _scan(optax.with_extra_args_support(optax.sgd(eta + a)),
                              _params(dtype=jnp.float64), costs, steps)
        np.testing.assert_allclose(ravel_pytree(p)[0], ravel_pytree(p_ref)[0], rtol=1e-12)


def test_geometric_controller_is_truncated_heavy_ball():
    """Base lr 0 and M_i = -eta beta^i: x_{t+1} = x_t - eta sum_{i<H} beta^i g_{t-i}."""
    with enable_x64():
        eta, beta, Hm, steps = 0.1, 0.8, 4, 25
        M = -eta * beta ** np.arange(Hm)
        tx = metaopt(0.0, scale_by_adam_betas=None, H=Hm, HH=1, freeze_gpc_params=True,
                     initial_gpc_params=M, dtype=jnp.float64)
        costs = _costs(steps, dtype=jnp.float64)
        (p, _), _ = _scan(tx, _params(dtype=jnp.float64), costs, steps)
        x, grads = np.zeros(6), []
        for s in range(steps):
            a, b = np.asarray(costs.a[s]), np.asarray(costs.b[s])
            grads.append(a * (x - b))
            x = x - eta * sum(beta**i * grads[s - i] for i in range(min(Hm, s + 1)))
        np.testing.assert_allclose(ravel_pytree(p)[0], x, rtol=1e-12)


def test_warm_up_keeps_controller_and_reports_no_cost_before_step_H_plus_HH():
    Hm, HHm = 3, 2
    tx = metaopt(0.1, scale_by_adam_betas=None, H=Hm, HH=HHm, initial_m0=0.0,
                 meta_optimizer=optax.sgd(0.1),
                 example_cost_fn=jax.tree.map(lambda c: c[0], _costs(1)))
    costs = _costs(Hm + HHm + 1)
    p, s = _params(), tx.init(_params())
    step = jax.jit(lambda p, s, f: tx.update(jax.grad(f)(p), s, p, cost_fn=f))
    for t in range(Hm + HHm + 1):
        metrics = s.logging_metrics()
        assert float(metrics["gpc_cost_valid"]) == 0.0 and float(metrics["gpc_cost"]) == 0.0
        np.testing.assert_array_equal(np.asarray(s.M), np.zeros(Hm))
        u, s = step(p, s, jax.tree.map(lambda c: c[t], costs))  # noqa: B023
        p = optax.apply_updates(p, u)
    assert float(s.gpc_cost_valid) == 1.0 and float(s.gpc_cost) > 0
    assert np.all(np.asarray(s.M) != 0)


def test_scalar_controller_beats_sgd_at_too_small_learning_rate():
    """Ill-conditioned quadratic (cond 100), base lr 0.1 << 2/L = 2: the controller learns
    negative M_i (a larger effective step, momentum-like) and ends far below SGD."""
    n, steps, eta = 10, 200, 0.1
    costs = _costs(steps, n=n, lo=-2, hi=0)
    costs = costs.replace(b=jnp.ones_like(costs.b))
    tx = metaopt(eta, scale_by_adam_betas=None, H=2, HH=2, initial_m0=0.0,
                 meta_optimizer=optax.sgd(0.1), example_cost_fn=jax.tree.map(lambda c: c[0],
                                                                           costs))
    (_, state), (losses, _) = _scan(tx, _params(n), costs, steps)
    sgd = optax.with_extra_args_support(optax.sgd(eta))
    _, (sgd_losses, _) = _scan(sgd, _params(n), costs, steps)
    assert np.all(np.asarray(state.M) < -0.1)
    assert float(losses[-1]) < 0.1 * float(sgd_losses[-1])


def test_projection_keeps_controller_in_ball_and_prevents_divergence():
    """Stiff quadratic (L = 10), scalar controller, meta lr 1: diverges without the ball;
    with max_gpc_norm = 0.05 every M stays in it and training converges."""
    steps, r = 100, 0.05
    costs = _costs(steps, n=10, lo=0, hi=1)

    def run(max_norm):
        tx = metaopt(0.1, scale_by_adam_betas=None, H=1, HH=2, initial_m0=0.0,
                     fake_the_dynamics=True, meta_optimizer=optax.sgd(1.0),
                     max_gpc_norm=max_norm)

        def step(carry, f):
            p, s = carry
            loss, g = jax.value_and_grad(f)(p)
            u, s = tx.update(g, s, p, cost_fn=f)
            return (optax.apply_updates(p, u), s), (loss, s.M)

        p0 = _params(10)
        return jax.jit(lambda: jax.lax.scan(step, (p0, tx.init(p0)), costs))()[1]

    losses, Ms = run(None)
    assert not np.all(np.isfinite(np.asarray(losses))) or float(losses[-1]) > 1e6
    losses, Ms = run(r)
    assert np.all(np.abs(np.asarray(Ms)) <= r)
    assert np.all(np.isfinite(np.asarray(losses))) and float(losses[-1]) < 0.1 * float(losses[0])


class DeadInputLoss(flax.struct.PyTreeNode):
    """Linear regression whose first input feature is always 0 (like the digits' blank
    pixels): that weight's gradient is exactly 0 at every step."""

    x: jax.Array
    y: jax.Array

    def __call__(self, params):
        pred = self.x @ params["w"] + params["b"]
        return jnp.mean((pred - self.y) ** 2)


@pytest.mark.parametrize("eps_root,skip_nonfinite", [(1e-16, True), (0.0, True), (0.0, False)])
def test_real_rollouts_through_adam_survive_exactly_zero_gradients(eps_root, skip_nonfinite):
    """eps_root > 0 (the default) keeps the rollout's derivative finite; with optax's
    eps_root = 0 grad_M is NaN at every controller update: `skip_nonfinite` skips those
    updates (counted) and M stays finite, without it NaN reaches M and the params."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    x[:, 0] = 0.0
    f = DeadInputLoss(jnp.asarray(x), jnp.asarray(rng.standard_normal(8), jnp.float32))
    tx = metaopt(0.01, scale_by_adam_betas=(0.9, 0.999), H=2, HH=3, example_cost_fn=f,
                 adam_eps_root=eps_root, skip_nonfinite=skip_nonfinite)
    p = {"w": jnp.zeros(4), "b": jnp.zeros(())}
    costs = jax.tree.map(lambda c: jnp.broadcast_to(c, (8,) + c.shape), f)
    (p, state), _ = _scan(tx, p, costs, 8)
    finite = np.all(np.isfinite(np.asarray(state.M))) and np.all(np.isfinite(ravel_pytree(p)[0]))
    assert finite == skip_nonfinite
    due_updates = 8 - (2 + 3)
    if eps_root > 0:
        assert int(state.nonfinite_meta_steps) == 0 and float(state.gpc_cost_valid) == 1.0
    elif skip_nonfinite:
        assert int(state.nonfinite_meta_steps) == due_updates
        assert float(state.gpc_cost_valid) == 0.0 and np.all(np.asarray(state.M) == 0.0)


def test_scan_from_step_zero_with_real_rollouts_and_fixed_structure():
    """100 steps of real rollouts (replaying past costs) in one lax.scan from a fresh
    state: no prefilling; the state's structure, shapes and dtypes never change."""
    steps = 100
    costs = _costs(steps)
    tx = metaopt(0.1, H=3, HH=3, example_cost_fn=jax.tree.map(lambda c: c[0], costs),
                 meta_optimizer=optax.adam(1e-3))
    s0 = tx.init(_params())
    (p, s), (losses, _) = _scan(tx, _params(), costs, steps)
    assert jax.tree.structure(s) == jax.tree.structure(s0)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s0), strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype
    assert int(s.step) == steps and float(s.gpc_cost_valid) == 1.0
    assert np.all(np.isfinite(np.asarray(losses))) and float(losses[-1]) < float(losses[0])


def test_vmap_over_seeds_matches_separate_runs():
    steps = 12
    tx = metaopt(0.1, H=2, HH=2, example_cost_fn=jax.tree.map(lambda c: c[0], _costs(1)),
                 meta_optimizer=optax.sgd(0.01))
    costs = [_costs(steps, seed=k) for k in range(3)]
    stacked = jax.tree.map(lambda *c: jnp.stack(c), *costs)
    params = jax.tree.map(lambda x: jnp.stack([x + k for k in range(3)]), _params())
    single = jax.jit(lambda p, c: _scan(tx, p, c, steps)[0])  # compiled once, reused
    batched = jax.jit(jax.vmap(single))(params, stacked)
    for k in range(3):
        p_k = jax.tree.map(lambda x: x[k], params)  # noqa: B023
        p, s = single(p_k, costs[k])
        np.testing.assert_allclose(ravel_pytree(p)[0],
                                   ravel_pytree(jax.tree.map(lambda x: x[k], batched[0]))[0],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(s.M), np.asarray(batched[1].M[k]), rtol=1e-5)


def test_bfloat16_state_returns_float32_updates_and_stays_finite():
    steps = 50
    costs = _costs(steps)
    tx = metaopt(0.1, H=3, HH=2, dtype=jnp.bfloat16, example_cost_fn=jax.tree.map(
        lambda c: c[0], costs), m_method="diagonal")
    (p, s), (losses, updates) = _scan(tx, _params(), costs, steps)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(updates))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(p))
    assert s.disturbances.dtype == jnp.bfloat16 and s.param_history.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(losses))) and float(losses[-1]) < float(losses[0])


KEPT_BY_RESET = ("M", "meta_opt_state", "nonfinite_grad_steps", "nonfinite_meta_steps")


@pytest.mark.parametrize("kw", [
    dict(scale_by_adam_betas=(0.9, 0.999), HH=3, meta_optimizer=optax.adam(1e-2)),
    dict(grad_clip=0.5, HH=2, m_method="diagonal"),
    dict(scale_by_adam_betas=(0.9, 0.999), freeze_cost_fn_during_rollouts=True, HH=1),
])
def test_episode_reset_is_init_except_the_controller_and_the_skip_counts(kw):
    """After some steps (one with a NaN gradient), a reset state equals a fresh `init` of
    the new params in every field (T's moments, raw-gradient and cost histories
    included), except M, its optimizer state and the skip counters, which carry over;
    also for the MetaOpt entry of a chain state."""
    steps = 8
    costs = _costs(steps)
    tx = metaopt(0.1, H=2, example_cost_fn=jax.tree.map(lambda c: c[0], costs), **kw)
    p, s = _params(), tx.init(_params())
    step = jax.jit(lambda p, s, f, bad: tx.update(
        jax.tree.map(lambda g: g * jnp.where(bad, jnp.nan, 1.0), jax.grad(f)(p)), s, p,
        cost_fn=f))
    for t in range(steps):
        u, s = step(p, s, jax.tree.map(lambda c: c[t], costs), t == 3)  # noqa: B023
        p = optax.apply_updates(p, u)
    assert int(s.nonfinite_grad_steps) == 1 and float(s.gpc_cost_valid) == 1.0
    assert s.lagged_transform_state is not None and np.any(np.asarray(s.disturbances))
    new_params = jax.tree.map(lambda x: x + 1.0, _params())
    fresh_init = tx.init(new_params)
    chain_state = (s, optax.EmptyState())
    for fresh in (reset_for_new_episode(s, new_params),
                  reset_for_new_episode(chain_state, new_params)[0]):
        assert jax.tree.structure(fresh) == jax.tree.structure(s)
        for name in s.__dataclass_fields__:
            want = getattr(s if name in KEPT_BY_RESET else fresh_init, name)
            for a, b in zip(jax.tree.leaves(getattr(fresh, name)), jax.tree.leaves(want),
                            strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def test_grad_clip_bounds_the_disturbance():
    """M = 0, frozen, base lr eta: the update is -eta * clip(g) (global norm)."""
    tx = metaopt(1.0, grad_clip=0.5, H=2, freeze_gpc_params=True)
    p = {"w": jnp.asarray([3.0, 4.0]), "b": jnp.zeros(1)}
    g = {"w": jnp.asarray([3.0, 4.0]), "b": jnp.zeros(1)}  # norm 5 -> scaled by 0.1
    u, _ = tx.update(g, tx.init(p), p)
    np.testing.assert_allclose(u["w"], [-0.3, -0.4], rtol=1e-6)


def test_frozen_cost_fn_rollouts_equal_replayed_costs_when_the_cost_is_constant():
    """freeze_cost_fn_during_rollouts uses f_t at every replayed step; with one fixed
    batch f_s = f_t, so it must match the rollout that replays the stored costs."""
    steps = 10
    costs = jax.tree.map(lambda c: jnp.broadcast_to(c[0], c.shape), _costs(steps))
    kw = dict(scale_by_adam_betas=(0.9, 0.999), H=2, HH=3, meta_optimizer=optax.sgd(0.1))
    tx_replay = metaopt(0.1, example_cost_fn=jax.tree.map(lambda c: c[0], costs), **kw)
    tx_frozen = metaopt(0.1, freeze_cost_fn_during_rollouts=True, **kw)
    (p1, s1), _ = _scan(tx_replay, _params(), costs, steps)
    (p2, s2), _ = _scan(tx_frozen, _params(), costs, steps)
    assert s2.cost_fn_history is None and s1.cost_fn_history is not None
    np.testing.assert_allclose(np.asarray(s1.M), np.asarray(s2.M), rtol=1e-6)
    np.testing.assert_allclose(ravel_pytree(p1)[0], ravel_pytree(p2)[0], rtol=1e-6)
