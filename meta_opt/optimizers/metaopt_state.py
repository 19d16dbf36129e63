"""MetaOpt's state, its logging metrics, episode resets and controller files.

The state is a `flax.struct.dataclass` whose leaves are all arrays (static configuration
lives in the closure of the transformation), so it passes through `jit`, `lax.scan`,
`vmap` and checkpointing unchanged. Per-parameter buffers are flat, length `n_pad`
(the parameter count padded for sharding); only the first `num_params` entries are real.
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

# The file format is shared with the PyTorch MetaOpt; load_controller is re-exported here.
from meta_opt.controller_file import M_METHODS, load_controller, write_controller  # noqa: F401


@flax.struct.dataclass
class MetaOptState:
    """State of `metaopt`. Ring buffers hold step s in row `s % rows`.

    Attributes:
      step: t, the number of updates played so far (int32 scalar).
      num_params: n, the true flat parameter count (the rest of each buffer is padding).
      disturbances: (H + HH, n_pad) ring of w_s = T(g_s) in the state dtype (H rows when
        the controller is frozen).
      param_history: (HH, n_pad) ring of past flat params x_s, or None when frozen.
      learning_rate_history: (HH,) ring of the played eta_s (M's dtype) when eta varies (a
        schedule, or a value injected by `optax.inject_hyperparams`): rollouts replay these
        values. None when eta is a Python number or the controller is frozen.
      weight_decay_history: (HH,) ring of the played lambda_s, likewise.
      grad_history: (HH, n_pad) ring of raw gradients g_s, kept only for real rollouts
        through a disturbance transform with state (Adam scaling), to advance
        `lagged_transform_state`; otherwise None.
      cost_fn_history: tuple of the stacked leaves of the last HH cost functions (real
        rollouts that replay past costs), otherwise None.
      transform_state: optax state of the disturbance transform T at step t.
      lagged_transform_state: T's state at step t - HH, kept for real rollouts that apply
        T (an empty optax state when T only clips), otherwise None.
      M: controller (float32; float64 for float64 params), shape (H,), (H, n_pad) or
        (H, n_pad, n_pad).
      meta_opt_state: the controller optimizer's optax state.
      learning_rate: eta of the last played step (for the effective M_0).
      grad_M: (H,) summary of the last meta-gradient (mean over coordinates / of the
        diagonal for diagonal / full controllers).
      gpc_cost: C(M) of the last controller update (0 before the first one).
      gpc_cost_valid: 1.0 once a controller update has happened, else 0.0.
      nonfinite_grad_steps: int32 count of updates skipped for a non-finite gradient
        (`skip_nonfinite`); kept across episodes.
      nonfinite_meta_steps: int32 count of controller updates skipped for a non-finite
        C(M) or grad_M (`skip_nonfinite`); kept across episodes.
    """

    step: jax.Array
    num_params: jax.Array
    disturbances: jax.Array
    param_history: jax.Array | None
    learning_rate_history: jax.Array | None
    weight_decay_history: jax.Array | None
    grad_history: jax.Array | None
    cost_fn_history: tuple[jax.Array, ...] | None
    transform_state: Any
    lagged_transform_state: Any
    M: jax.Array
    meta_opt_state: Any
    learning_rate: jax.Array
    grad_M: jax.Array
    gpc_cost: jax.Array
    gpc_cost_valid: jax.Array
    nonfinite_grad_steps: jax.Array
    nonfinite_meta_steps: jax.Array

    def logging_metrics(self) -> dict[str, jax.Array]:
        """Scalars to log (jittable): M_i, grad_M_i, gpc_cost(_valid), skip counts, bytes.

        `M_i` is the effective coefficient on w_{t-i} in the played update, so M_0
        includes -eta_t; diagonal/full controllers report the mean over coordinates /
        of the diagonal. `gpc_cost` is 0 with `gpc_cost_valid` 0 before the first
        controller update (step H + HH). `nonfinite_grad_steps` / `nonfinite_meta_steps`
        count skipped updates (int32). The `*_bytes` entries are `memory_bytes()` as
        int32, exact below 2**31 (a count at or above 2**31 comes as float32, rounded;
        `memory_bytes()` is always exact).
        """
        summary = _controller_summary(self.M, self.num_params)
        effective = summary.at[0].add(-self.learning_rate.astype(summary.dtype))
        out: dict[str, jax.Array] = {}
        for i in range(effective.shape[0]):
            out[f"M_{i}"] = effective[i]
        for i in range(self.grad_M.shape[0]):
            out[f"grad_M_{i}"] = self.grad_M[i]
        out["gpc_cost"] = self.gpc_cost
        out["gpc_cost_valid"] = self.gpc_cost_valid
        out["nonfinite_grad_steps"] = self.nonfinite_grad_steps
        out["nonfinite_meta_steps"] = self.nonfinite_meta_steps
        for k, v in self.memory_bytes().items():
            out[k] = jnp.asarray(v, jnp.int32 if v < 2**31 else jnp.float32)
        return out

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held by each history, exact (static: computed from shapes and dtypes).

        `param_history_bytes` includes the recorded eta_s and lambda_s; `total_bytes`
        counts every leaf of the state (M and the meta-optimizer state included)."""
        disturbance = _nbytes(self.disturbances) + _nbytes(self.grad_history)
        params = (_nbytes(self.param_history) + _nbytes(self.learning_rate_history)
                  + _nbytes(self.weight_decay_history))
        cost = _nbytes(self.cost_fn_history)
        transform = _nbytes(self.transform_state) + _nbytes(self.lagged_transform_state)
        total = _nbytes(self)
        return {
            "disturbance_history_bytes": disturbance,
            "param_history_bytes": params,
            "cost_fn_history_bytes": cost,
            "disturbance_transform_state_bytes": transform,
            "total_bytes": total,
        }


def _nbytes(tree: Any) -> int:
    return int(sum(x.size * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _controller_summary(M: jax.Array, num_params: jax.Array) -> jax.Array:
    """(H,) per-lag scalar: M itself, mean of the diagonal vector, or mean of the diagonal."""
    n = jnp.maximum(num_params, 1).astype(jnp.float32)
    if M.ndim == 1:
        return M.astype(jnp.float32)
    if M.ndim == 2:  # padding entries are kept at exactly 0
        return jnp.sum(M, axis=1).astype(jnp.float32) / n
    return jnp.trace(M, axis1=1, axis2=2).astype(jnp.float32) / n


def m_method_of(M: jax.Array) -> str:
    """The m_method of a controller array, from its rank."""
    return M_METHODS[M.ndim - 1]


def _is_state(x: Any) -> bool:
    return isinstance(x, MetaOptState)


def find_metaopt_state(opt_state: Any) -> MetaOptState | None:
    """The MetaOptState inside `opt_state` (itself, or inside a chain's tuple), or None."""
    for leaf in jax.tree.leaves(opt_state, is_leaf=_is_state):
        if _is_state(leaf):
            return leaf
    return None


def _fresh(state: MetaOptState, params: Any) -> MetaOptState:
    n = sum(int(np.size(x)) for x in jax.tree.leaves(params))
    if not isinstance(state.num_params, jax.core.Tracer) and n != int(state.num_params):
        raise ValueError(
            f"reset_for_new_episode: the new params have {n} entries but the state was built "
            f"for {int(state.num_params)}; an episode must re-initialise the same model"
        )
    zeros = lambda tree: jax.tree.map(jnp.zeros_like, tree)  # noqa: E731
    # optax's scale_by_adam / clip states start at zero, so zeros_like is a fresh init
    # (and keeps each buffer's sharding). The skip counters count over the whole run.
    return state.replace(
        step=jnp.zeros_like(state.step),
        disturbances=zeros(state.disturbances),
        param_history=zeros(state.param_history),
        learning_rate_history=zeros(state.learning_rate_history),
        weight_decay_history=zeros(state.weight_decay_history),
        grad_history=zeros(state.grad_history),
        cost_fn_history=zeros(state.cost_fn_history),
        transform_state=zeros(state.transform_state),
        lagged_transform_state=zeros(state.lagged_transform_state),
        learning_rate=jnp.zeros_like(state.learning_rate),
        grad_M=jnp.zeros_like(state.grad_M),
        gpc_cost=jnp.zeros_like(state.gpc_cost),
        gpc_cost_valid=jnp.zeros_like(state.gpc_cost_valid),
    )


def reset_for_new_episode(state: Any, params: Any) -> Any:
    """A fresh state for new params that keeps the controller M and its optimizer state.

    Everything else is as `init` makes it, except the non-finite skip counters, which
    count over the whole run.

    Args:
      state: a MetaOptState, or an optax chain state containing one (only that entry is
        replaced; reset the other entries yourself if you want them fresh).
      params: the new episode's initial params (same structure as before).

    Returns:
      The state with empty histories, step 0, and the same M / meta-optimizer state.
    """
    if _is_state(state):
        return _fresh(state, params)
    if find_metaopt_state(state) is None:
        raise ValueError(
            "reset_for_new_episode: no MetaOptState found in the given state "
            f"(type {type(state).__name__}); pass the state returned by metaopt().init"
        )
    return jax.tree.map(
        lambda s: _fresh(s, params) if _is_state(s) else s, state, is_leaf=_is_state
    )


def save_controller(path: str | os.PathLike, state: Any) -> str:
    """Writes the controller of `state` to `controller.npz` (in `path` if a directory).

    Stores M without sharding padding and in its own dtype (a float64 controller round
    trips exactly), with `m_method`, `H` and `num_params`, so a later run can check that
    the controller fits its model (`initial_gpc_params`).
    Returns the file written.
    """
    s = find_metaopt_state(state)
    if s is None:
        raise ValueError("save_controller: no MetaOptState found in the given state")
    n = int(s.num_params)
    M = np.asarray(jax.device_get(s.M))
    if M.ndim == 2:
        M = M[:, :n]
    elif M.ndim == 3:
        M = M[:, :n, :n]
    return write_controller(path, M, n)


