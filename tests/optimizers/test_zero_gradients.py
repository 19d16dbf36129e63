"""Every registered optimizer stays finite and still on all-zero gradients.

A flat region (De Jong's step function, dead ReLUs, a loss at its floor) gives exactly zero
gradients for many steps. Learning-rate-free methods estimate step sizes from ratios of
gradient statistics, which are then 0/0: optax's D-Adaptation AdamW and Prodigy return NaN
there (see `meta_opt.optimizers.dadaptation`). Here every optimizer, with its default
hyperparameters but weight decay off (decay legitimately moves the params on a flat loss),
takes 5 steps on f(x) = sum floor(x) + shift, whose gradient is zero everywhere, and must
return finite updates and states and leave the params where they are. `shift` makes the
loss value 0 (so Polyak's (f - f_min) / |g|^2 is 0/0) or positive; it is a traced argument,
so one compile serves both.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import meta_opt.optimizers  # noqa: F401  (runs every registration)
from meta_opt.optimizers import OptimizerConfig, list_optimizers, make_cost_fn

NUM_STEPS = 5

# Schedule-free methods interpolate y = (1 - b1) z + b1 x between equal points, and
# MADGRAD (dual averaging) recomputes z = x_0 - s / v^(1/3) and averages x towards it: both
# can round, so their params may move by float32 rounding (a few ulp), not exactly 0.
ROUNDING_ONLY = {"ScheduleFreeSGD", "ScheduleFreeAdamW", "MADGRAD"}

# Params in [0, 1), so sum floor(x) = 0; away from integers, so floor's gradient is 0.
X0 = {
    "w": jnp.asarray(np.linspace(0.05, 0.95, 12).reshape(3, 4), jnp.float32),
    "b": jnp.asarray([0.3, 0.7, 0.5, 0.1], jnp.float32),
}


def flat_loss(params, shift):
    """sum floor(x) + shift: piecewise constant, so its gradient is exactly 0."""
    return sum(jnp.sum(jnp.floor(x)) for x in jax.tree.leaves(params)) + shift


def without_weight_decay(cfg: OptimizerConfig) -> OptimizerConfig:
    """`cfg` with every `weight_decay` field (top level or a nested base config) set to 0."""
    changes = {}
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if field.name == "weight_decay":
            changes[field.name] = 0.0
        elif isinstance(value, OptimizerConfig):
            changes[field.name] = without_weight_decay(value)
    return dataclasses.replace(cfg, **changes)


def run_flat(name: str):
    """A jitted `run(shift) -> (updates [steps, ...], states [steps, ...], final params)`."""
    cfg = without_weight_decay(OptimizerConfig.lookup(name)())
    example = make_cost_fn(flat_loss, jnp.float32(0.0))
    tx = cfg.make_jax(example_cost_fn=example) if cfg.requires_cost_fn else cfg.make_jax()
    tx = optax.with_extra_args_support(tx)

    @jax.jit
    def run(shift):
        cost_fn = make_cost_fn(flat_loss, shift)

        def step(carry, _):
            params, state = carry
            value, grads = jax.value_and_grad(cost_fn)(params)
            updates, state = tx.update(grads, state, params, value=value, cost_fn=cost_fn)
            return (optax.apply_updates(params, updates), state), (grads, updates, state)

        (params, _), (grads, updates, states) = jax.lax.scan(
            step, (X0, tx.init(X0)), None, NUM_STEPS
        )
        return grads, updates, states, params

    return run


def float_leaves(tree) -> list[np.ndarray]:
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    return [x for x in leaves if np.issubdtype(x.dtype, np.floating)]


@pytest.mark.parametrize("name", list_optimizers())
def test_zero_gradients_give_finite_zero_updates(name):
    run = run_flat(name)
    for shift in (0.0, 1.5):
        grads, updates, states, params = run(jnp.float32(shift))
        assert all(np.all(g == 0) for g in float_leaves(grads))  # the premise
        for what, tree in (("update", updates), ("state", states)):
            for leaf in float_leaves(tree):
                assert np.all(np.isfinite(leaf)), f"{name}: non-finite {what} (shift={shift})"
        if name in ROUNDING_ONLY:
            for p, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(X0), strict=True):
                np.testing.assert_allclose(p, p0, rtol=4 * np.finfo(np.float32).eps, atol=0)
        else:
            for u in float_leaves(updates):
                np.testing.assert_array_equal(u, 0, err_msg=f"{name} moved (shift={shift})")
