"""Antithetic Gaussian perturbations of theta and the paired unroll (shared by ES and PES).

Each task gets its own perturbation eps ~ N(0, std^2 I); the positive run uses
theta + eps and the negative run theta - eps with the same key and data (common random
numbers), so the loss difference isolates the effect of eps. The pair runs either
stacked into one vmapped batch of 2 * num_tasks runs (one scan, better hardware use) or
as two scans; both give the same numbers.

References:
  Salimans et al., "Evolution Strategies as a Scalable Alternative to Reinforcement
  Learning", 2017 (antithetic sampling).
"""

from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp

from meta_opt.learned.base import MetaParams
from meta_opt.outer.truncated_step import (
    TruncatedUnrollOut,
    TruncatedUnrollState,
    VectorizedTruncatedStep,
    tile_theta,
)


def sample_perturbations(
    theta: MetaParams, key: chex.PRNGKey, num_tasks: int, std: float
) -> MetaParams:
    """Per-task Gaussian perturbations: each leaf gets shape (num_tasks,) + leaf.shape."""
    leaves, treedef = jax.tree_util.tree_flatten(theta)
    keys = jax.random.split(key, len(leaves))
    eps = [
        std * jax.random.normal(k, (num_tasks,) + jnp.shape(x), jnp.result_type(x))
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree_util.tree_unflatten(treedef, eps)


def _concat(a, b):
    return jax.tree_util.tree_map(lambda x, y: jnp.concatenate([x, y], axis=0), a, b)


def _halves(tree, n):
    """Splits [T, 2n, ...] outputs into the positive and negative halves."""
    return (
        jax.tree_util.tree_map(lambda x: x[:, :n], tree),
        jax.tree_util.tree_map(lambda x: x[:, n:], tree),
    )


def antithetic_unroll(
    step: VectorizedTruncatedStep,
    theta: MetaParams,
    eps: MetaParams,
    pos_state: TruncatedUnrollState,
    neg_state: TruncatedUnrollState,
    key: chex.PRNGKey,
    data: Any,
    num_steps: int,
    stack: bool = True,
) -> tuple[TruncatedUnrollState, TruncatedUnrollState, TruncatedUnrollOut, TruncatedUnrollOut]:
    """Unrolls theta + eps from pos_state and theta - eps from neg_state, same randomness.

    Returns (next_pos_state, next_neg_state, pos_out, neg_out); outs are [T, num_tasks].
    """
    n = step.num_tasks
    theta_b = tile_theta(theta, n)
    theta_pos = jax.tree_util.tree_map(jnp.add, theta_b, eps)
    theta_neg = jax.tree_util.tree_map(jnp.subtract, theta_b, eps)
    if not stack:
        pos_state, pos_out = step.unroll(theta_pos, pos_state, key, data, num_steps)
        neg_state, neg_out = step.unroll(theta_neg, neg_state, key, data, num_steps)
        return pos_state, neg_state, pos_out, neg_out
    both_state, both_out = step.unroll(
        _concat(theta_pos, theta_neg), _concat(pos_state, neg_state), key, data, num_steps
    )
    pos_state, neg_state = (
        jax.tree_util.tree_map(lambda x: x[:n], both_state),
        jax.tree_util.tree_map(lambda x: x[n:], both_state),
    )
    pos_out, neg_out = _halves(both_out, n)
    return pos_state, neg_state, pos_out, neg_out


def es_gradient(eps: MetaParams, coeff: jax.Array) -> MetaParams:
    """mean_i coeff_i * eps_i: the ES estimate from per-task weights coeff [num_tasks]."""
    return jax.tree_util.tree_map(
        lambda e: jnp.mean(coeff.reshape((-1,) + (1,) * (e.ndim - 1)) * e, axis=0), eps
    )
