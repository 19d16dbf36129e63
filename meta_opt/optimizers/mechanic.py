"""Mechanic, a learning-rate tuner wrapping any optax optimizer, safe in float32.

Mechanic plays x_t = x_ref + s_t * Delta_t (here with optax's sign convention
x_t = x_ref - s_t * Delta_t, Delta_t = -(sum of base updates)), where the scale s_t is
learned online by a parameter-free "coin betting" rule from h_t = <g_t, Delta_t>.

Why not `optax.contrib.mechanize` as is: its memory-efficient variant does not store
Delta_t but recomputes it each step as (x_ref - x_t) / s_t. With its default s_init = 1e-6
the first steps move x by ~1e-6 * |base update|, which is below float32 resolution whenever
|x| is of order 1 (ulp(1) ~ 1.2e-7). Then x_t == x_ref in float32, the recomputed Delta_t
is 0, h_t = 0, the wealth never grows, and s stays at s_init forever: training stalls.
(It works only when the parameters start near 0 or are float64.)

Upstream: no optax issue or pull request reports this (searched google-deepmind/optax's
issues for mechanize / Mechanic and float32 / stalling); the defect is in
`optax.contrib.mechanize` as of optax 0.2.8, whose update recomputes
`delta = (x_ref - params) / s_sum` instead of storing it. It is pinned on optax's own
version by `test_optax_mechanize_stalls_in_float32_with_default_s_init` (the loss stays
bit-for-bit unchanged for 200 steps and s stays at s_init).

The fix here keeps Delta_t in the state (the paper's Algorithm 1; one more copy of the
params) so h_t is exact however small s_t is, and s grows geometrically from s_init until
the steps are visible. The scale statistics (r, m, v, s) are kept in at least float32 even
for bfloat16 params. Otherwise the update follows optax's implementation (including its
clipping of h and its weight decay on the gradient fed to the tuner).

References:
  Cutkosky, Defazio & Mehta, `Mechanic: A Learning Rate Tuner
  <https://arxiv.org/abs/2306.00144>`_, NeurIPS 2023
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

__all__ = ["MechanicState", "mechanize"]


class MechanicState(NamedTuple):
    """State of `mechanize`.

    Attributes:
      base_optimizer_state: state of the wrapped optimizer.
      count: number of updates so far (int32).
      r: per-beta wealth, shape (num_betas,).
      m: per-beta running max |h|.
      v: per-beta second moment of h.
      s: per-beta scale; the learned learning-rate multiplier is `s.sum()`.
      x0: the reference point x_ref (the params at the first update).
      delta: Delta_t, minus the sum of the base optimizer's updates.
    """

    base_optimizer_state: optax.OptState
    count: jax.Array
    r: jax.Array
    m: jax.Array
    v: jax.Array
    s: jax.Array
    x0: optax.Params
    delta: optax.Updates


def mechanize(
    base_optimizer: optax.GradientTransformation,
    weight_decay: float = 1e-2,
    eps: float = 1e-8,
    s_init: float = 1e-6,
    num_betas: int = 6,
) -> optax.GradientTransformationExtraArgs:
    """Wraps `base_optimizer` so that Mechanic learns the scale of its updates.

    Args:
      base_optimizer: the optimizer whose updates are scaled (give it learning rate ~1, or
        a schedule peaking at 1).
      weight_decay: Mechanic's own decay of the gradient fed to the tuner (not the base
        optimizer's weight decay).
      eps: numerical floor in the scale statistics.
      s_init: initial total scale (split over the betas).
      num_betas: number of averaging horizons, betas = 1 - 10^-k, k = 1..num_betas.

    Returns:
      An optax transformation accepting extra args (forwarded to the base optimizer).

    References:
      Cutkosky, Defazio & Mehta, 2023 (arXiv:2306.00144), Algorithm 1
    """
    base_optimizer = optax.with_extra_args_support(base_optimizer)

    def init_fn(params: optax.Params) -> MechanicState:
        dtype = jnp.promote_types(optax.tree.dtype(params, "lowest"), jnp.float32)
        zeros = jnp.zeros([num_betas], dtype)
        return MechanicState(
            base_optimizer_state=base_optimizer.init(params),
            count=jnp.zeros([], jnp.int32),
            r=zeros,
            m=zeros,
            v=zeros,
            s=jnp.full([num_betas], s_init / num_betas, dtype),
            x0=params,
            delta=optax.tree.zeros_like(params),
        )

    def update_fn(
        updates: optax.Updates,
        state: MechanicState,
        params: optax.Params | None = None,
        **extra_args: Any,
    ) -> tuple[optax.Updates, MechanicState]:
        if params is None:
            raise ValueError("mechanize needs params: call update(grads, state, params)")
        base_updates, base_state = base_optimizer.update(
            updates, state.base_optimizer_state, params, **extra_args
        )
        # Training loops that swap in pre-trained weights after init: anchor at the params
        # actually seen at the first update, as optax does.
        x0 = jax.lax.cond(state.count == 0, lambda: params, lambda: state.x0)
        dtype = state.s.dtype
        s_sum = jnp.sum(state.s)
        grad_norm = optax.tree.norm(updates).astype(dtype)
        param_norm = optax.tree.norm(params).astype(dtype)
        decay = weight_decay * s_sum * grad_norm / (param_norm + eps)
        grads = jax.tree.map(
            lambda g, p: g.astype(dtype) + decay * p.astype(dtype), updates, params
        )

        h = optax.tree.vdot(grads, state.delta).astype(dtype)
        delta = jax.tree.map(lambda d, u: d - u.astype(d.dtype), state.delta, base_updates)

        betas = jnp.asarray([1.0 - 0.1**k for k in range(1, num_betas + 1)], dtype)
        clipped_h = jnp.clip(h, -state.m, state.m)
        m = jnp.maximum(betas * state.m, jnp.abs(h) + eps)
        v = betas**2 * state.v + h**2
        r = betas * state.r + clipped_h * state.s
        wealth = (s_init / num_betas) * m + jnp.maximum(r, 0.0)
        s = wealth / (jnp.sqrt(v) + eps)

        scale = jnp.sum(s)
        new_updates = jax.tree.map(
            lambda x_ref, d, p: (x_ref - scale * d - p).astype(p.dtype), x0, delta, params
        )
        new_state = MechanicState(
            base_optimizer_state=base_state,
            count=optax.safe_increment(state.count),
            r=r,
            m=m,
            v=v,
            s=s,
            x0=x0,
            delta=delta,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
