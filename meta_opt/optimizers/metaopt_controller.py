"""MetaOpt's controller: the lags M_i, their action on disturbances, and the meta step.

Pure functions over arrays: applying the lags of a scalar / diagonal / full controller to
the disturbance ring, projecting M onto its ball, the initial controller, and the meta
step that turns the rollout cost C(M) into the next M
(`M <- Proj(M + meta_optimizer(clip(grad_M C(M))))`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.optimizers.metaopt_ring import row
from meta_opt.optimizers.metaopt_state import M_METHODS, load_controller

# M as the rollout differentiates it: the (H,) array of a scalar controller, or the tuple
# of the H lags of a diagonal / full one (differentiating w.r.t. separate lags avoids a
# zero-padded (H, n) cotangent for every use of every lag).
Lags = jax.Array | tuple[jax.Array, ...]


def split_lags(M: jax.Array) -> Lags:
    """M as `Lags`: itself (scalar), or the tuple of its H lags (diagonal / full)."""
    return M if M.ndim == 1 else tuple(M[i] for i in range(M.shape[0]))


def join_lags(lags: Lags) -> jax.Array:
    """The inverse of `split_lags`."""
    return jnp.stack(lags) if isinstance(lags, tuple) else lags


def apply_lag(M_i: jax.Array, w: jax.Array) -> jax.Array:
    """M_i * w for a scalar, diagonal (vector) or full (matrix) M_i."""
    return M_i @ w if M_i.ndim == 2 else M_i * w


def sum_lags(M: tuple[jax.Array, ...], rows: list[jax.Array]) -> jax.Array:
    """sum_i M_i * rows[i] for the lags M_i of a diagonal (n,) or full (n, n) controller.

    Unrolled over the H lags on purpose: `jnp.sum(M * rows, axis=0)` lowers on XLA:CPU to
    a strided reduction over the leading axis that is ~50x slower than H fused adds."""
    out = apply_lag(M[0], rows[0])
    for i in range(1, len(rows)):
        out = out + apply_lag(M[i], rows[i])
    return out


def control(lags: Lags, disturbances: jax.Array, s: jax.Array) -> jax.Array:
    """The control term sum_{i<H} M_i * w_{s-i}, read from the disturbance ring, in M's dtype.

    Written as one contraction over the ring's rows (scalar: a coefficient vector times
    the ring; diagonal / full: a gather of the H rows) so XLA reads the ring once, rather
    than H separate row slices and adds."""
    K = disturbances.shape[0]
    if not isinstance(lags, tuple):  # scalar controller
        H = lags.shape[0]
        slots = jnp.mod(s - jnp.arange(H), K)
        coef = jnp.zeros((K,), lags.dtype).at[slots].add(lags)
        return coef @ disturbances.astype(lags.dtype)
    rows = [row(disturbances, s - i).astype(lags[0].dtype) for i in range(len(lags))]
    return sum_lags(lags, rows)


def project(M: jax.Array, radius: float | None) -> jax.Array:
    """Projects each lag onto {||M_i|| <= radius}: |M_i| (scalar), max |entry| (diagonal:
    the operator norm of a diagonal matrix), Frobenius norm (full: bounds the operator norm)."""
    if radius is None:
        return M
    if M.ndim <= 2:
        return jnp.clip(M, -radius, radius)
    norms = jnp.sqrt(jnp.sum(M * M, axis=(1, 2), keepdims=True))
    return M * jnp.minimum(1.0, radius / jnp.maximum(norms, 1e-30))


def grad_summary(grad_M: jax.Array, num_params: int) -> jax.Array:
    """(H,) per-lag scalar of a meta-gradient: itself, the mean over coordinates (diagonal),
    or the mean of the diagonal (full)."""
    if grad_M.ndim == 1:
        return grad_M
    if grad_M.ndim == 2:
        return jnp.sum(grad_M, axis=1) / num_params
    return jnp.trace(grad_M, axis1=1, axis2=2) / num_params


class MetaStep(NamedTuple):
    """One controller update computed from the rollout cost C at the current M.

    Attributes:
      M: the next controller, Proj(M + meta_optimizer step on the clipped grad_M C).
      meta_opt_state: the meta-optimizer's next state.
      grad_M: (H,) `grad_summary` of the clipped meta-gradient.
      cost: C(M) at the current M.
      end_point: y_HH, where the rollout with the current M ends.
      finite: whether C(M) and grad_M C(M) are finite (the step is safe to take).
    """

    M: jax.Array
    meta_opt_state: Any
    grad_M: jax.Array
    cost: jax.Array
    end_point: jax.Array
    finite: jax.Array


def meta_step(
    M: jax.Array,
    meta_opt_state: Any,
    rollout_cost: Callable[[Lags], tuple[jax.Array, jax.Array]],
    meta_optimizer: optax.GradientTransformation,
    meta_grad_clip: float | None,
    max_gpc_norm: float | None,
    num_params: int,
) -> MetaStep:
    """The controller update M <- Proj(M + meta_optimizer(clip(grad_M C(M)))).

    Args:
      M: the current controller, (H,), (H, n_pad) or (H, n_pad, n_pad).
      meta_opt_state: the meta-optimizer's state.
      rollout_cost: lags -> (C, y_HH), the rollout cost as a function of M's lags.
      meta_optimizer: the optax transformation stepping M.
      meta_grad_clip: clip grad_M to this global norm first (None: no clipping).
      max_gpc_norm: radius of the ball M is projected onto (None: no projection).
      num_params: n, for the per-lag summary of grad_M.

    Returns:
      A `MetaStep`; the caller decides whether to keep it (due and finite).
    """
    (cost, end_point), grad_lags = jax.value_and_grad(rollout_cost, has_aux=True)(split_lags(M))
    grad_M = join_lags(grad_lags)
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(grad_M))
    if meta_grad_clip is not None:
        grad_M = optax.clip_by_global_norm(meta_grad_clip).update(grad_M, optax.EmptyState())[0]
    updates, meta_opt_state = meta_optimizer.update(grad_M, meta_opt_state, M)
    M_next = project(optax.apply_updates(M, updates), max_gpc_norm)
    return MetaStep(M_next, meta_opt_state, grad_summary(grad_M, num_params), cost,
                    end_point, finite)


def initial_controller(
    m_method: str,
    H: int,
    n: int,
    n_pad: int,
    initial_m0: float,
    initial_gpc_params: Any,
    dtype: Any = jnp.float32,
) -> jax.Array:
    """M at step 0 (padding zero): from `initial_gpc_params` in its own dtype, else
    M_0 = initial_m0 * I built in `dtype` (so a float64 controller holds initial_m0 exactly,
    not its float32 rounding). The caller casts it and projects it onto the ball."""
    if initial_gpc_params is not None:
        ctrl = initial_gpc_params
        if isinstance(ctrl, (str, bytes)) or hasattr(ctrl, "__fspath__"):
            ctrl = load_controller(ctrl)
        if isinstance(ctrl, dict):
            got_method, got = ctrl.get("m_method"), np.asarray(ctrl["M"])
        else:
            got = np.asarray(ctrl)
            got_method = M_METHODS[got.ndim - 1] if 1 <= got.ndim <= 3 else None
        want = {"scalar": (H,), "diagonal": (H, n), "full": (H, n, n)}[m_method]
        if got_method != m_method or got.shape != want:
            raise ValueError(
                f"initial_gpc_params does not fit this run: it holds a {got_method!r} "
                f"controller of shape {got.shape}, but m_method={m_method!r} with H={H} on "
                f"{n} parameters needs shape {want}; use the same H, m_method and model as "
                "the run that saved it"
            )
        M = jnp.asarray(got)
        if m_method == "diagonal":
            M = jnp.pad(M, ((0, 0), (0, n_pad - n)))
        elif m_method == "full":
            M = jnp.pad(M, ((0, 0), (0, n_pad - n), (0, n_pad - n)))
        return M
    if m_method == "scalar":
        return jnp.zeros((H,), dtype).at[0].set(initial_m0)
    real = (jnp.arange(n_pad) < n).astype(dtype) * initial_m0  # padding stays 0
    if m_method == "diagonal":
        return jnp.zeros((H, n_pad), dtype).at[0].set(real)
    return jnp.zeros((H, n_pad, n_pad), dtype).at[0].set(jnp.diag(real))
