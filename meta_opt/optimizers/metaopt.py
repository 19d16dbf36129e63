"""MetaOpt: online-control (gradient perturbation controller, GPC) meta-optimization.

Training is treated as a dynamical system driven by disturbances w_t = T(g_t) (the
gradient, optionally clipped and Adam-scaled). The played update adds a learned linear
controller over the last H disturbances to a base step:

    x_{t+1} = x_t - lambda x_t - eta_t w_t + sum_{i<H} M_i w_{t-i}

and M is learned online: at step t >= H + HH, the last HH steps are replayed from
x_{t-HH} with the current M (with the recorded disturbances, "fake" dynamics, or with
gradients recomputed along the counterfactual trajectory, "real" dynamics), the end point
is scored with the current cost f_t, and the meta-optimizer steps M along grad_M C(M).
With M held fixed the replay reproduces x_t exactly (both modes).

The pieces, each in its module: the disturbance transform T (`metaopt_disturbance`), the
rollout cost C(M) (`metaopt_rollout`), the controller algebra and meta step
(`metaopt_controller`), the ring buffers (`metaopt_ring`) and the state
(`metaopt_state`). This module wires them into one optax transformation: the played
update, the history writes, and the handling of non-finite gradients.

References:
  Chen, Agarwal, Hazan, "Online control for meta-optimization", NeurIPS 2023.
  Agarwal, Bullins, Hazan, Kakade, Singh, "Online control with adversarial
  disturbances", ICML 2019 (GPC).
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from meta_opt import sharding
from meta_opt.optimizers.baselines import AdamWConfig
from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    as_optax_learning_rate,
    register_optimizer,
)
from meta_opt.optimizers.cost_fn import CostFn, contains_masked_node, is_array_leaf
from meta_opt.optimizers.metaopt_controller import (
    Lags,
    MetaStep,
    control,
    initial_controller,
    meta_step,
    project,
    split_lags,
)
from meta_opt.optimizers.metaopt_disturbance import depends_on_past, disturbance_transform
from meta_opt.optimizers.metaopt_ring import row, write
from meta_opt.optimizers.metaopt_rollout import (
    RolloutHistory,
    RolloutSpec,
    advance_transform_state,
    rollout_cost,
)
from meta_opt.optimizers.metaopt_state import (
    M_METHODS,
    MetaOptState,
    find_metaopt_state,
    load_controller,
    reset_for_new_episode,
    save_controller,
)

__all__ = [
    "METAOPT_STATIC_ARGS",
    "MetaOptConfig",
    "MetaOptState",
    "find_metaopt_state",
    "load_controller",
    "metaopt",
    "played_update",
    "reset_for_new_episode",
    "save_controller",
]

DEFAULT_MAX_FULL_CONTROLLER_BYTES = 2 * 1024**3

# Arguments of `metaopt` that fix the state's shapes or are not numbers:
# `optax.inject_hyperparams(metaopt, static_args=METAOPT_STATIC_ARGS)(...)` then injects
# the numeric hyperparameters (base_learning_rate, weight_decay, grad_clip, ...).
METAOPT_STATIC_ARGS = (
    "H",
    "HH",
    "dtype",
    "example_cost_fn",
    "initial_gpc_params",
    "max_full_controller_bytes",
    "mesh",
    "meta_optimizer",
    "m_method",
)


def metaopt(
    base_learning_rate: float | optax.Schedule,
    weight_decay: float = 0.0,
    grad_clip: float | None = None,
    scale_by_adam_betas: tuple[float, float] | None = None,
    H: int = 4,
    HH: int = 2,
    m_method: str = "scalar",
    meta_optimizer: optax.GradientTransformation | None = None,
    fake_the_dynamics: bool = False,
    freeze_gpc_params: bool = False,
    freeze_cost_fn_during_rollouts: bool = False,
    counterfactual: bool = True,
    dtype: Any = jnp.float32,
    max_gpc_norm: float | None = None,
    meta_grad_clip: float | None = None,
    initial_gpc_params: Any = None,
    example_cost_fn: Any = None,
    mesh: Mesh | None = None,
    *,
    initial_m0: float = 0.0,
    adam_eps: float = 1e-8,
    adam_eps_root: float = 1e-16,
    max_full_controller_bytes: int | None = None,
    skip_warm_up_with_cond: bool = False,
    skip_nonfinite: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """MetaOpt as an optax transformation: `update(grads, state, params, cost_fn=f)`.

    Args:
      base_learning_rate: eta_t, a float or an optax schedule of the step count.
      weight_decay: lambda (decoupled: -lambda x_t in the update).
      grad_clip: clip the gradient to this global norm inside T (None: no clipping),
        wherever T is applied: the played step and every recomputed rollout step.
      scale_by_adam_betas: (b1, b2) to Adam-scale disturbances inside T (None: raw grads).
      H: number of past disturbances the controller acts on (>= 1).
      HH: rollout length used to learn M (>= 1).
      m_method: "scalar", "diagonal" or "full" M_i.
      meta_optimizer: optax transformation updating M (default `optax.sgd(1e-3)`).
      fake_the_dynamics: replay stored disturbances instead of recomputing gradients.
      freeze_gpc_params: deployment: M is fixed, no rollouts, only H disturbances kept.
      freeze_cost_fn_during_rollouts: real rollouts use f_t at every step, the first
        included (no cost history).
      counterfactual: if False, also add (y_HH - x_t) to the played update.
      dtype: storage dtype of the histories (e.g. jnp.bfloat16); M stays float32 (float64
        for float64 params) and the arithmetic runs in the params' precision.
      max_gpc_norm: project each M_i onto a ball of this radius at init and after every
        meta step.
      meta_grad_clip: clip grad_M to this global norm before the meta step.
      initial_gpc_params: initial M: an array, a `load_controller` dict, or a path to a
        controller.npz (or a directory holding one).
      example_cost_fn: a cost_fn like those `update` will receive; required by real
        rollouts that replay past costs, to size the cost history at `init`. On a mesh,
        the cost history takes the sharding of its leaves (replicated if they have none).
      mesh: shard per-parameter buffers along this mesh's "opt" axis.
      initial_m0: M_0 at step 0 when no initial_gpc_params (diagonal/full: times I).
      adam_eps: Adam scaling's eps outside the square root.
      adam_eps_root: Adam scaling's eps inside the square root.
      max_full_controller_bytes: refuse a "full" controller larger than this (None:
        2 GiB).
      skip_warm_up_with_cond: guard the controller update with `lax.cond` (skips the
        rollout during warm-up) instead of computing it and selecting the result.
      skip_nonfinite: a non-finite gradient skips the whole update (zero updates, state
        unchanged but for `nonfinite_grad_steps`); a non-finite C(M) or grad_M skips the
        controller update only (`nonfinite_meta_steps`). False: NaN propagates.

    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is a `MetaOptState`.

    References:
      Chen, Agarwal, Hazan, "Online control for meta-optimization", NeurIPS 2023.
    """
    H = _static_int("H", H, "controller history length")
    HH = _static_int("HH", HH, "rollout length")
    if m_method not in M_METHODS:
        raise ValueError(f"unknown m_method {m_method!r}; choose one of {', '.join(M_METHODS)}")
    transform = disturbance_transform(grad_clip, scale_by_adam_betas, adam_eps, adam_eps_root)
    learn = not freeze_gpc_params
    # With eta == 0 the recomputed gradients never enter the rollout (y_{k+1} does not
    # depend on v_s), so real and fake rollouts coincide: compile the cheap one. Only a
    # Python number is known to be 0 here (an injected hyperparameter is an array).
    zero_lr = _python_number(base_learning_rate) == 0.0
    spec = RolloutSpec(H=H, HH=HH, transform=transform,
                       real=learn and not fake_the_dynamics and not zero_lr,
                       freeze_cost=bool(freeze_cost_fn_during_rollouts),
                       learning_rate=_python_number(base_learning_rate),
                       weight_decay=_python_number(weight_decay))
    keeps_start_state = learn and spec.needs_start_transform_state
    impl = _MetaOpt(
        base_learning_rate=base_learning_rate,
        weight_decay=weight_decay,
        m_method=m_method,
        meta_optimizer=optax.sgd(1e-3) if meta_optimizer is None else meta_optimizer,
        learn=learn,
        counterfactual=bool(counterfactual),
        dtype=_storage_dtype(dtype),
        max_gpc_norm=max_gpc_norm,
        meta_grad_clip=meta_grad_clip,
        initial_gpc_params=initial_gpc_params,
        initial_m0=initial_m0,
        example_cost_fn=example_cost_fn,
        mesh=mesh,
        max_full_controller_bytes=(DEFAULT_MAX_FULL_CONTROLLER_BYTES
                                   if max_full_controller_bytes is None
                                   else int(max_full_controller_bytes)),
        skip_warm_up_with_cond=bool(skip_warm_up_with_cond),
        skip_nonfinite=bool(skip_nonfinite),
        spec=spec,
        keeps_start_state=keeps_start_state,
        keeps_grads=keeps_start_state and depends_on_past(transform),
        replays_costs=learn and spec.replays_costs,
    )
    return optax.GradientTransformationExtraArgs(impl.init, impl.update)


def played_update(lags: Lags, disturbances: jax.Array, t: jax.Array, x: jax.Array,
                  w: jax.Array, eta: jax.Array, weight_decay: jax.Array) -> jax.Array:
    """The played update u_t = -lambda x_t - eta_t w_t + sum_{i<H} M_i * w_{t-i} (flat).

    `lags` is the controller after step t's controller update; `disturbances` is the ring
    with w_t written."""
    return -weight_decay * x - eta * w + control(lags, disturbances, t).astype(x.dtype)


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: jit may key on tx.update
class _MetaOpt:
    """One `metaopt` transformation: its static configuration, `init` and `update`."""

    base_learning_rate: Any
    weight_decay: Any
    m_method: str
    meta_optimizer: optax.GradientTransformation
    learn: bool
    counterfactual: bool
    dtype: Any
    max_gpc_norm: Any
    meta_grad_clip: Any
    initial_gpc_params: Any
    initial_m0: Any
    example_cost_fn: Any
    mesh: Mesh | None
    max_full_controller_bytes: int
    skip_warm_up_with_cond: bool
    skip_nonfinite: bool
    spec: RolloutSpec
    keeps_start_state: bool  # lagged_transform_state: T's state at t-HH
    keeps_grads: bool  # grad_history: g_s, to advance that state
    replays_costs: bool  # cost_fn_history: f_s

    @property
    def rows(self) -> int:
        """Rows of the disturbance ring: H + HH when learning, H when frozen."""
        return self.spec.H + self.spec.HH if self.learn else self.spec.H

    def learning_rate_at(self, t: jax.Array, dtype: Any) -> jax.Array:
        """eta_t: the schedule at t, or the constant (possibly an injected array)."""
        lr = self.base_learning_rate
        return jnp.asarray(lr(t) if callable(lr) else lr, dtype)

    # --- init ----------------------------------------------------------------------------
    def init(self, params: Any) -> MetaOptState:
        """The state before step 0: empty histories, the initial (projected) controller."""
        flat, _ = ravel_pytree(params)
        n = int(flat.size)
        n_pad = sharding.padded_size(n, self.mesh)
        self._check_full_controller_size(n, n_pad)
        H, HH = self.spec.H, self.spec.HH
        cdtype = jnp.promote_types(flat.dtype, jnp.float32)
        t_state = self.spec.transform.init(jnp.zeros((n_pad,), cdtype))
        M = initial_controller(self.m_method, H, n, n_pad, self.initial_m0,
                               self.initial_gpc_params, dtype=cdtype)
        M = project(M.astype(cdtype), self.max_gpc_norm)  # float32; float64 for float64 params
        ring = lambda rows: jnp.zeros((rows, n_pad), self.dtype)  # noqa: E731
        learn = self.learn
        state = MetaOptState(
            step=jnp.zeros((), jnp.int32),
            num_params=jnp.asarray(n, jnp.int32),
            disturbances=ring(self.rows),
            param_history=ring(HH) if learn else None,
            learning_rate_history=(jnp.zeros((HH,), cdtype)
                                   if learn and self.spec.records_learning_rates else None),
            weight_decay_history=(jnp.zeros((HH,), cdtype)
                                  if learn and self.spec.records_weight_decays else None),
            grad_history=ring(HH) if self.keeps_grads else None,
            cost_fn_history=self._empty_cost_history(),
            transform_state=t_state,
            lagged_transform_state=t_state if self.keeps_start_state else None,
            M=M,
            meta_opt_state=self.meta_optimizer.init(M),
            learning_rate=jnp.zeros((), jnp.float32),
            grad_M=jnp.zeros((H,), M.dtype),
            gpc_cost=jnp.zeros((), M.dtype),
            gpc_cost_valid=jnp.zeros((), jnp.float32),
            nonfinite_grad_steps=jnp.zeros((), jnp.int32),
            nonfinite_meta_steps=jnp.zeros((), jnp.int32),
        )
        return self._constrain(state)

    def _check_full_controller_size(self, n: int, n_pad: int) -> None:
        need = self.spec.H * n_pad * n_pad * 4
        if self.m_method == "full" and need > self.max_full_controller_bytes:
            raise ValueError(
                f"a 'full' controller for {n} parameters needs H*n*n*4 = {need / 2**30:.2f}"
                f" GiB (H={self.spec.H}), above max_full_controller_bytes="
                f"{self.max_full_controller_bytes / 2**30:.2f} GiB; use m_method='diagonal' "
                "or 'scalar', or raise max_full_controller_bytes if you have the memory"
            )

    def _empty_cost_history(self) -> tuple[jax.Array, ...] | None:
        if not self.replays_costs:
            return None
        if self.example_cost_fn is None:
            raise ValueError(
                "metaopt with real rollouts replays the cost functions of past steps, so "
                "init needs their structure: pass example_cost_fn=<a cost_fn like the ones "
                "update will get> to metaopt(...) / make_jax(...), or set "
                "fake_the_dynamics=True or freeze_cost_fn_during_rollouts=True"
            )
        leaves = _recordable_leaves(self.example_cost_fn, "example_cost_fn")
        return tuple(jnp.zeros((self.spec.HH,) + jnp.shape(a), jnp.result_type(a))
                     for a in leaves)

    # --- update --------------------------------------------------------------------------
    def update(self, grads: Any, state: MetaOptState, params: Any = None, *,
               cost_fn: Any = None, **extra_args: Any) -> tuple[Any, MetaOptState]:
        """Step t: the controller update (when due), then the played update and the
        history writes. A non-finite gradient (with `skip_nonfinite`) makes every write
        keep its old value, so the state is unchanged but for `nonfinite_grad_steps`."""
        del extra_args
        self._check_update_args(state, params, cost_fn)
        x, unravel = ravel_pytree(params)
        g, _ = ravel_pytree(grads)
        n = int(x.size)
        n_pad = state.disturbances.shape[1]
        cdtype = jnp.promote_types(x.dtype, jnp.float32)
        x = jnp.pad(x.astype(cdtype), (0, n_pad - n))
        g = jnp.pad(g.astype(cdtype), (0, n_pad - n))
        t = state.step
        eta = self.learning_rate_at(t, cdtype)
        lam = jnp.asarray(self.weight_decay, cdtype)
        ok = jnp.all(jnp.isfinite(g)) if self.skip_nonfinite else None

        w, t_state = self.spec.transform.update(g, state.transform_state)
        W = _write_step(state.disturbances, t, w, ok)
        fields: dict[str, Any] = {}
        M, shift = state.M, None
        if self.learn:
            history = self._rollout_history(state, W, cdtype)

            def evaluate(f: Any, y: jax.Array) -> jax.Array:
                return f(unravel(y[:n]))

            controller, shift = self._learn_controller(state, history, cost_fn, evaluate, x, n,
                                                        ok)
            fields.update(controller)
            fields.update(self._record(state, history, x, g, eta, lam, cost_fn, ok))
            M = controller["M"]

        u = played_update(split_lags(M), W, t, x, w, eta, lam)
        if shift is not None:
            u = u + shift
        if ok is not None:
            u = jnp.where(ok, u, jnp.zeros_like(u))
        updates = jax.tree.map(lambda a, p: a.astype(jnp.result_type(p)), unravel(u[:n]), params)

        fields.update(
            step=t + (1 if ok is None else ok.astype(t.dtype)),
            disturbances=W,
            transform_state=_keep_unless_skipped(ok, t_state, state.transform_state),
            learning_rate=_keep_unless_skipped(ok, eta.astype(jnp.float32), state.learning_rate),
        )
        if ok is not None:
            fields["nonfinite_grad_steps"] = state.nonfinite_grad_steps + (~ok).astype(jnp.int32)
        return updates, self._constrain(state.replace(**fields))

    def _check_update_args(self, state: Any, params: Any, cost_fn: Any) -> None:
        if params is None:
            raise ValueError("metaopt.update needs the current params: update(grads, state, "
                             "params, cost_fn=...)")
        if not isinstance(state, MetaOptState):
            raise TypeError(f"expected a MetaOptState, got {type(state).__name__}")
        if not self.learn:
            return
        if cost_fn is None:
            raise ValueError(
                "metaopt.update needs the loss as cost_fn=f with f(params) -> scalar (e.g. "
                "meta_opt.optimizers.make_cost_fn(loss_fn, batch)); only freeze_gpc_params=True "
                "runs without it"
            )
        if isinstance(cost_fn, CostFn) and contains_masked_node(params):
            raise ValueError(
                "metaopt sees only some of the parameters (the others are optax.MaskedNode: "
                "it runs inside optax.multi_transform or optax.masked), but cost_fn is a "
                "CostFn of the full parameters; build it with meta_opt.optimizers."
                "make_masked_cost_fn(loss_fn, params, batch), which fills in the others"
            )
        if self.replays_costs:
            _check_like_history(cost_fn, state.cost_fn_history)

    def _rollout_history(self, state: MetaOptState, W: jax.Array, cdtype: Any) -> RolloutHistory:
        """What the rollout of step t reads: the rings, x_{t-HH}, g_{t-HH}, T at t-HH."""
        t, HH = state.step, self.spec.HH
        start_grad = None
        if self.keeps_grads:
            start_grad = row(state.grad_history, t - HH).astype(cdtype)
        return RolloutHistory(
            step=t,
            start=row(state.param_history, t - HH).astype(cdtype),
            disturbances=W,
            learning_rates=state.learning_rate_history,
            weight_decays=state.weight_decay_history,
            start_grad=start_grad,
            start_transform_state=state.lagged_transform_state,
            cost_fns=state.cost_fn_history,
        )

    def _learn_controller(self, state: MetaOptState, history: RolloutHistory, cost_fn: Any,
                          evaluate: Any, x: jax.Array, n: int, ok: jax.Array | None
                          ) -> tuple[dict[str, Any], jax.Array | None]:
        """The controller fields after step t's controller update, and the counterfactual
        shift (y_HH - x_t, None when `counterfactual`).

        The update is due at t >= H + HH (and a finite g_t); with `skip_nonfinite` it is
        applied only if C(M) and grad_M are finite, and counted otherwise."""
        spec = self.spec
        due = history.step >= spec.H + spec.HH
        if ok is not None:
            due = due & ok

        def compute(operands):
            M, meta_state = operands
            step = meta_step(
                M, meta_state,
                lambda lags: rollout_cost(lags, history, cost_fn, spec, evaluate),
                self.meta_optimizer, self.meta_grad_clip, self.max_gpc_norm, n,
            )
            return step._replace(grad_M=step.grad_M.astype(state.grad_M.dtype),
                                 cost=step.cost.astype(state.gpc_cost.dtype),
                                 end_point=step.end_point.astype(x.dtype))

        def skip(operands):
            M, meta_state = operands
            return MetaStep(M, meta_state, jnp.zeros_like(state.grad_M),
                            jnp.zeros_like(state.gpc_cost), jnp.zeros_like(x), jnp.asarray(True))

        if self.skip_warm_up_with_cond:
            step = jax.lax.cond(due, compute, skip, (state.M, state.meta_opt_state))
        else:
            # Computed every step and selected (what vmap does to a cond anyway): keeps one
            # straight-line program, without the buffer copies XLA:CPU inserts around a
            # conditional; only the H + HH warm-up steps compute in vain.
            step = compute((state.M, state.meta_opt_state))
        applied = due & step.finite if self.skip_nonfinite else due

        def keep(new, old):
            return jax.tree.map(lambda a, b: jnp.where(applied, a, b), new, old)

        fields = dict(
            M=keep(step.M, state.M),
            meta_opt_state=keep(step.meta_opt_state, state.meta_opt_state),
            grad_M=keep(step.grad_M, state.grad_M),
            gpc_cost=keep(step.cost, state.gpc_cost),
            gpc_cost_valid=jnp.maximum(state.gpc_cost_valid, applied.astype(jnp.float32)),
        )
        if self.skip_nonfinite:
            skipped = (due & ~step.finite).astype(jnp.int32)
            fields["nonfinite_meta_steps"] = state.nonfinite_meta_steps + skipped
        shift = None
        if not self.counterfactual:
            shift = jnp.where(applied, step.end_point - x, jnp.zeros_like(x))
        return fields, shift

    def _record(self, state: MetaOptState, history: RolloutHistory, x: jax.Array,
                g: jax.Array, eta: jax.Array, lam: jax.Array, cost_fn: Any,
                ok: jax.Array | None) -> dict[str, Any]:
        """Step t's entries in the histories that later rollouts read."""
        t, HH = state.step, self.spec.HH
        fields = dict(param_history=_write_step(state.param_history, t, x, ok))
        if self.spec.records_learning_rates:
            fields["learning_rate_history"] = _write_step(state.learning_rate_history, t, eta, ok)
        if self.spec.records_weight_decays:
            fields["weight_decay_history"] = _write_step(state.weight_decay_history, t, lam, ok)
        if self.keeps_grads:
            fields["grad_history"] = _write_step(state.grad_history, t, g, ok)
            # T's state moves from step t-HH to t-HH+1 with the recorded g_{t-HH}, in every
            # mode: it is T's state along the played trajectory. (A rollout's own copy
            # advances with the gradients it recomputes.)
            advanced = advance_transform_state(self.spec.transform, state.lagged_transform_state,
                                               history.start_grad)
            moves = t >= HH if ok is None else (t >= HH) & ok
            fields["lagged_transform_state"] = jax.tree.map(
                lambda a, b: jnp.where(moves, a, b), advanced, state.lagged_transform_state)
        if self.replays_costs:
            fields["cost_fn_history"] = tuple(
                _write_step(h, t, jnp.asarray(a), ok)
                for h, a in zip(state.cost_fn_history, jax.tree.leaves(cost_fn), strict=True)
            )
        return fields

    # --- sharding ------------------------------------------------------------------------
    def _constrain(self, state: MetaOptState) -> MetaOptState:
        """Pins every leaf's sharding on the mesh, the same after `init` and `update` (so a
        jitted step traces once): per-parameter buffers split along "opt", the cost
        history like the example cost's leaves, everything else replicated."""
        if self.mesh is None:
            return state
        mesh, n_pad = self.mesh, state.disturbances.shape[1]
        replicated = NamedSharding(mesh, PartitionSpec())

        def pin(x):
            if x.ndim >= 1 and x.shape[-1] == n_pad:
                return sharding.constrain_opt(x, mesh, 1 if x.ndim == 3 else -1)  # full M: rows
            return jax.lax.with_sharding_constraint(x, replicated)

        changes = {f.name: jax.tree.map(pin, getattr(state, f.name))
                   for f in dataclasses.fields(state) if f.name != "cost_fn_history"}
        if state.cost_fn_history is not None:
            specs = _cost_history_specs(self.example_cost_fn, mesh)
            changes["cost_fn_history"] = tuple(
                jax.lax.with_sharding_constraint(h, NamedSharding(mesh, spec))
                for h, spec in zip(state.cost_fn_history, specs, strict=True))
        return state.replace(**changes)



def _python_number(value: Any) -> float | None:
    """`value` as a float if it is a Python (or numpy scalar) number, else None (a
    schedule, or an array such as a hyperparameter injected by inject_hyperparams)."""
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return float(value)
    return None


def _write_step(ring: jax.Array, t: jax.Array, value: jax.Array, ok: jax.Array | None
                ) -> jax.Array:
    """`ring` with step t's row set to `value`, or kept as it was when `ok` is False (a
    skipped step): a one-row select, so the write stays in place."""
    value = jnp.asarray(value, ring.dtype)
    if ok is not None:
        value = jnp.where(ok, value, row(ring, t))
    return write(ring, t, value)


def _keep_unless_skipped(ok: jax.Array | None, new: Any, old: Any) -> Any:
    """`new`, or `old` where the step is skipped (`ok` False)."""
    if ok is None:
        return new
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


_RECORDABLE_HINT = (
    "build it with meta_opt.optimizers.make_cost_fn(loss_fn, batch, ...) (a pytree holding "
    "the batch), or set fake_the_dynamics=True or freeze_cost_fn_during_rollouts=True, "
    "which take any callable"
)


def _recordable_leaves(cost_fn: Any, name: str) -> list[Any]:
    """The leaves of `cost_fn`, which real rollouts replaying past costs record: arrays."""
    leaves = jax.tree.leaves(cost_fn)
    for a in leaves:
        if not is_array_leaf(a):
            raise TypeError(
                f"{name} must be a pytree of arrays, because real rollouts that replay past "
                f"costs record its leaves, but it has the leaf {a!r} ({type(a).__name__}); "
                + _RECORDABLE_HINT
            )
    return leaves


def _check_like_history(cost_fn: Any, history: tuple[jax.Array, ...]) -> None:
    leaves = _recordable_leaves(cost_fn, "cost_fn")
    got = [(jnp.shape(a), jnp.result_type(a)) for a in leaves]
    want = [(h.shape[1:], h.dtype) for h in history]
    if got != want:
        raise ValueError(
            "cost_fn does not match the example_cost_fn given at init: its leaves have "
            f"(shape, dtype) {got} but the cost history was built for {want}; pass an "
            "example_cost_fn with the same batch shapes as the training cost_fn"
        )


def _cost_history_specs(example_cost_fn: Any, mesh: Mesh) -> list[PartitionSpec]:
    """Per leaf of the cost history: the example leaf's spec on `mesh` behind the history
    axis, or replicated for a leaf not sharded on it."""
    specs = []
    for a in jax.tree.leaves(example_cost_fn):
        sharding_ = None
        if isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer):
            sharding_ = a.sharding
        if isinstance(sharding_, NamedSharding) and sharding_.mesh == mesh:
            specs.append(PartitionSpec(None, *sharding_.spec))
        else:
            specs.append(PartitionSpec())
    return specs


_STATIC_HINT = ("under optax.inject_hyperparams pass "
                "static_args=meta_opt.optimizers.METAOPT_STATIC_ARGS")


def _static_int(name: str, value: Any, what: str) -> int:
    """`value` as a Python int >= 1; it fixes the state's shapes, so it cannot be traced."""
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"{name} ({what}) fixes the state's shapes, so it must be a Python "
                         f"int, but it is a traced array; {_STATIC_HINT}")
    integral = isinstance(value, (int, np.integer)) or (
        isinstance(value, (jax.Array, np.ndarray)) and np.ndim(value) == 0
        and jnp.issubdtype(value.dtype, jnp.integer))
    if isinstance(value, bool) or not integral or int(value) < 1:
        raise ValueError(f"{name} ({what}) must be an integer >= 1, got {value!r}")
    return int(value)


def _storage_dtype(dtype: Any) -> Any:
    """The histories' storage dtype, checked: a floating dtype."""
    try:
        if isinstance(dtype, (jax.Array, np.ndarray)):
            raise TypeError("an array is not a dtype")
        d = jnp.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype must be a floating dtype such as jnp.float32 or jnp.bfloat16, "
                         f"got {dtype!r}; {_STATIC_HINT} (it takes callables such as "
                         "jnp.float32 for schedules)") from None
    if not jnp.issubdtype(d, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as float32 or bfloat16, got {d}")
    return d


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float64")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class MetaOptConfig(OptimizerConfig):
    """Serializable MetaOpt hyperparameters; `make_jax(example_cost_fn=, mesh=)` builds it.

    The defaults are one recipe for every workload, chosen on four (digits MLP, MNIST MLP,
    MNIST conv net, byte LM; docs/results.md): Adam-scaled disturbances with base learning
    rate 0 and weight decay 1e-4; a one-lag controller (H=1) learned on long rollouts
    (HH=16); Adam on the controller (AdamW at 1e-4, no decay on M) with meta-gradients
    clipped at norm 1; and a nonzero M_0 = -0.01 (`initial_m0`: the method starts as
    Adam-like steps of 0.01 instead of standing still until the controller learns).
    Why each (docs/metaopt.md, "The default recipe"): short rollouts (HH=2) see the
    period-2 oscillation of the first steps and learn from its sign flips, and lags past
    the first turn into anti-momentum there; a 16-step rollout measures the net
    displacement, in which that oscillation cancels. Plain SGD on M moves it by ~grad_M,
    which is clipped (+-1, alternating) early and vanishes late; Adam's first moment
    averages the alternation away and its normalised step keeps M moving by ~1e-4 per step
    where the loss is small, so episodes improve steadily.

    `meta_learning_rate`, when set, replaces the controller optimizer's learning rate
    (`--set optimizer.meta_learning_rate=3e-4` tunes the default AdamW); with
    `meta_optimizer=None` the controller takes plain SGD steps at `meta_learning_rate`.
    `skip_nonfinite` skips updates whose gradient (or controller update whose C(M) or
    grad_M) is non-finite instead of letting NaN reach M and the params.
    """

    optimizer_name: ClassVar[str] = "MetaOpt"
    requires_cost_fn: ClassVar[bool] = True

    base_learning_rate: float | ScheduleConfig = 0.0
    weight_decay: float = 1e-4
    grad_clip: float | None = None
    scale_by_adam_betas: tuple[float, float] | None = (0.9, 0.999)
    H: int = 1
    HH: int = 16
    m_method: str = "scalar"
    meta_optimizer: OptimizerConfig | None = AdamWConfig(learning_rate=1e-4, weight_decay=0.0)
    meta_learning_rate: float | None = None
    fake_the_dynamics: bool = False
    freeze_gpc_params: bool = False
    freeze_cost_fn_during_rollouts: bool = False
    counterfactual: bool = True
    dtype: str = "float32"
    max_gpc_norm: float | None = None
    meta_grad_clip: float | None = 1.0
    initial_gpc_params: str | None = None
    initial_m0: float = -1e-2
    skip_nonfinite: bool = True

    def validate(self) -> None:
        self.check_nonnegative("base_learning_rate", "weight_decay", "meta_learning_rate")
        self.check_positive("grad_clip", "max_gpc_norm", "meta_grad_clip")
        self.check_in_unit_interval("scale_by_adam_betas")
        self.check_choice("m_method", M_METHODS)
        self.check_choice("dtype", _DTYPES)
        for f in ("H", "HH"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self._fail(f, "an integer >= 1")
        if self.meta_optimizer is not None and self.meta_optimizer.requires_cost_fn:
            raise ConfigError("MetaOptConfig.meta_optimizer cannot itself need a cost_fn, got "
                              f"{self.meta_optimizer.registered_name()!r}")
        if self.meta_optimizer is None and self.meta_learning_rate is None:
            raise ConfigError("MetaOptConfig: meta_optimizer=None (plain SGD on the "
                              "controller) needs meta_learning_rate, e.g. 1e-3")
        if (self.meta_optimizer is not None and self.meta_learning_rate is not None
                and not hasattr(self.meta_optimizer, "learning_rate")):
            raise ConfigError(
                "MetaOptConfig.meta_learning_rate replaces the controller optimizer's "
                f"learning_rate, but {self.meta_optimizer.registered_name()!r} has none; "
                "set meta_learning_rate=None")

    def controller_optimizer(self) -> OptimizerConfig | None:
        """The controller's optimizer config with `meta_learning_rate` applied (None: SGD).

        Not validated again: inside a grid's compiled step the rate may be a tracer.
        """
        if self.meta_optimizer is None or self.meta_learning_rate is None:
            return self.meta_optimizer
        meta = copy.copy(self.meta_optimizer)  # frozen: copied without __init__
        object.__setattr__(meta, "learning_rate", self.meta_learning_rate)
        return meta

    def make_jax(
        self, example_cost_fn: Any = None, mesh: Mesh | None = None
    ) -> optax.GradientTransformationExtraArgs:
        """The `metaopt` transformation these settings describe.

        Args:
          example_cost_fn: a cost_fn like those `update` will receive (real rollouts that
            replay past costs size their history from it).
          mesh: shard the per-parameter buffers along this mesh's "opt" axis.
        """
        meta = self.controller_optimizer()
        meta_tx = optax.sgd(self.meta_learning_rate) if meta is None else meta.make_jax()
        return metaopt(
            base_learning_rate=as_optax_learning_rate(self.base_learning_rate),
            weight_decay=self.weight_decay,
            grad_clip=self.grad_clip,
            scale_by_adam_betas=self.scale_by_adam_betas,
            H=self.H,
            HH=self.HH,
            m_method=self.m_method,
            meta_optimizer=meta_tx,
            fake_the_dynamics=self.fake_the_dynamics,
            freeze_gpc_params=self.freeze_gpc_params,
            freeze_cost_fn_during_rollouts=self.freeze_cost_fn_during_rollouts,
            counterfactual=self.counterfactual,
            dtype=jnp.dtype(self.dtype),
            max_gpc_norm=self.max_gpc_norm,
            meta_grad_clip=self.meta_grad_clip,
            initial_gpc_params=self.initial_gpc_params,
            example_cost_fn=example_cost_fn,
            mesh=mesh,
            initial_m0=self.initial_m0,
            skip_nonfinite=self.skip_nonfinite,
        )

    def make_torch(self, params: Any, **kwargs: Any) -> Any:
        """The PyTorch MetaOpt (`meta_opt.torch.MetaOpt`) over `params` with these
        hyperparameters; `kwargs` override MetaOpt arguments. Needs torch installed."""
        from meta_opt.torch import metaopt_from_config

        return metaopt_from_config(self, params, **kwargs)
