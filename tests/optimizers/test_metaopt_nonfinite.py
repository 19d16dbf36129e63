"""MetaOpt's non-finite handling (`skip_nonfinite`, on by default).

A non-finite gradient skips the whole update: zero updates, the state exactly as it was
but for `nonfinite_grad_steps`. A non-finite controller cost or meta-gradient skips only
the controller update: the step is played with the current M, `nonfinite_meta_steps`
counts it. (The reference-implementation test checks both against the equations too.)
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from meta_opt.optimizers import metaopt


class Cost(flax.struct.PyTreeNode):
    """A quadratic with a per-step centre b, plus `poison` (0, or NaN to poison C(M))."""

    b: jax.Array
    poison: jax.Array

    def __call__(self, params):
        x, _ = ravel_pytree(params)
        return 0.5 * jnp.sum(jnp.linspace(0.5, 1.5, x.size) * (x - self.b) ** 2) + self.poison


STEPS, N = 14, 4
CONFIGS = {
    "real-adam-diagonal": dict(scale_by_adam_betas=(0.9, 0.99), m_method="diagonal", HH=3),
    "fake-clip-scalar": dict(grad_clip=0.5, fake_the_dynamics=True, HH=2,
                             counterfactual=False),
}


def _tx(**kw):
    defaults = dict(H=2, meta_optimizer=optax.sgd(0.1), initial_m0=-0.05,
                    example_cost_fn=Cost(jnp.zeros(N), jnp.zeros(())))
    return metaopt(0.1, **{**defaults, **kw})


def _params():
    return {"w": jnp.array([0.5, -0.2, 0.3]), "b": jnp.array([0.1])}


def _centres(steps, seed=0):
    return jnp.asarray(1.0 + 0.3 * np.random.default_rng(seed).standard_normal((steps, N)),
                       jnp.float32)


def _step_fn(tx):
    @jax.jit
    def step(params, state, b, poison, corrupt):
        grads = jax.grad(Cost(b, jnp.zeros(())))(params)
        grads = {**grads, "w": grads["w"].at[1].add(corrupt)}
        return tx.update(grads, state, params, cost_fn=Cost(b, poison))

    return step


def _run(tx, centres, corrupt=None, poison=None, step=None):
    step = _step_fn(tx) if step is None else step
    corrupt = np.zeros(len(centres)) if corrupt is None else corrupt
    poison = np.zeros(len(centres)) if poison is None else poison
    params, state, out = _params(), tx.init(_params()), []
    for b, c, q in zip(centres, corrupt, poison, strict=True):
        updates, state = step(params, state, b, q, c)
        params = optax.apply_updates(params, updates)
        out.append((params, state, updates))
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nonfinite_gradients_are_skipped_as_if_those_calls_never_happened(name):
    """NaN and inf gradients at calls 3 (warm-up), 8 and 9 (the controller learning):
    each such call returns zero updates and leaves the state exactly as it was but for
    the count; the run equals the run without those calls, and stays finite."""
    tx = _tx(**CONFIGS[name])
    centres = _centres(STEPS)
    bad = {3: np.nan, 8: np.inf, 9: -np.inf}
    corrupt = np.array([bad.get(i, 0.0) for i in range(STEPS)])
    step = _step_fn(tx)
    got = _run(tx, centres, corrupt, step=step)
    clean = _run(tx, jnp.asarray([c for i, c in enumerate(centres) if i not in bad]), step=step)
    k = 0
    for i, (params, state, updates) in enumerate(got):
        assert np.all(np.isfinite(ravel_pytree(params)[0])) and np.all(np.isfinite(state.M))
        if i in bad:
            assert all(np.all(np.asarray(u) == 0) and u.dtype == jnp.float32
                       for u in jax.tree.leaves(updates))
            before = got[i - 1][1]
            assert int(state.nonfinite_grad_steps) == int(before.nonfinite_grad_steps) + 1
            for a, b in zip(jax.tree.leaves(state.replace(nonfinite_grad_steps=0)),
                            jax.tree.leaves(before.replace(nonfinite_grad_steps=0)),
                            strict=True):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            continue
        p_clean, s_clean, _ = clean[k]
        k += 1
        np.testing.assert_allclose(ravel_pytree(params)[0], ravel_pytree(p_clean)[0],
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(state.M), np.asarray(s_clean.M), rtol=1e-6,
                                   atol=1e-7)
    final = got[-1][1]
    assert int(final.nonfinite_grad_steps) == len(bad) and int(final.step) == STEPS - len(bad)
    assert int(final.nonfinite_meta_steps) == 0 and float(final.gpc_cost_valid) == 1.0
    metrics = final.logging_metrics()
    assert metrics["nonfinite_grad_steps"].dtype == jnp.int32
    assert int(metrics["nonfinite_grad_steps"]) == len(bad)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nonfinite_controller_cost_skips_only_the_controller_update(name):
    """A NaN cost value at a step where the controller update is due: M, its optimizer
    state, grad_M and gpc_cost stay; the step is played with the current M and no
    counterfactual shift, exactly as a controller that does not learn would play it."""
    tx = _tx(**CONFIGS[name])
    frozen_M = _tx(**{**CONFIGS[name], "meta_optimizer": optax.sgd(0.0),
                      "counterfactual": True})
    centres = _centres(STEPS)
    poison = np.zeros(STEPS)
    poison[9] = np.nan
    got = _run(tx, centres, poison=poison)
    (p8, s8, _), (_, s9, u9) = got[8], got[9]
    for field in ("M", "meta_opt_state", "grad_M", "gpc_cost"):
        for a, b in zip(jax.tree.leaves(getattr(s9, field)), jax.tree.leaves(getattr(s8, field)),
                        strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=field)
    assert int(s9.nonfinite_meta_steps) == 1 and int(s9.step) == 10
    assert int(got[-1][1].nonfinite_meta_steps) == 1 and int(got[-1][1].nonfinite_grad_steps) == 0
    u_frozen, _ = _step_fn(frozen_M)(p8, s8, centres[9], jnp.zeros(()), 0.0)
    np.testing.assert_allclose(ravel_pytree(u9)[0], ravel_pytree(u_frozen)[0], rtol=1e-6,
                               atol=1e-8)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(got[-1][1]))


def test_without_skip_nonfinite_a_nan_gradient_reaches_params_and_controller():
    tx = _tx(**CONFIGS["real-adam-diagonal"], skip_nonfinite=False)
    corrupt = np.zeros(STEPS)
    corrupt[6] = np.nan
    params, state, _ = _run(tx, _centres(STEPS), corrupt)[-1]
    assert np.any(np.isnan(ravel_pytree(params)[0]))
    assert np.any(np.isnan(np.asarray(state.M)))
    assert int(state.nonfinite_grad_steps) == 0 and int(state.step) == STEPS
