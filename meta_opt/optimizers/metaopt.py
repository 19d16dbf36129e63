"""MetaOpt: online-control (gradient perturbation controller, GPC) meta-optimization.

Training is treated as a dynamical system driven by disturbances w_t = T(g_t) (the
gradient, optionally clipped and Adam-scaled). The played update adds a learned linear
controller over the last H disturbances to a base step:

    x_{t+1} = x_t - lambda x_t - eta_t w_t + sum_{i<H} M_i w_{t-i}

and M is learned online: at step t >= H + HH, the last HH steps are replayed from
x_{t-HH} with the current M (with the recorded disturbances, "fake" dynamics, or with
gradients recomputed along the counterfactual trajectory, "real" dynamics), the end point
is scored with the current cost f_t, and the meta-optimizer steps M along grad_M C(M).
With M held fixed the replay reproduces x_t exactly (both modes). See docs/metaopt.md.

References:
  Chen, Agarwal, Hazan, "Online control for meta-optimization", NeurIPS 2023.
  Agarwal, Bullins, Hazan, Kakade, Singh, "Online control with adversarial
  disturbances", ICML 2019 (GPC).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh

from meta_opt import sharding
from meta_opt.optimizers.config import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    as_optax_learning_rate,
    register_optimizer,
)
from meta_opt.optimizers.metaopt_controller import (
    disturbance_transform,
    grad_hvp_transposed,
    grad_summary,
    initial_controller,
    project,
    row,
    sum_lags,
    write,
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
    "MetaOptConfig",
    "MetaOptState",
    "find_metaopt_state",
    "load_controller",
    "metaopt",
    "reset_for_new_episode",
    "save_controller",
]

DEFAULT_MAX_FULL_CONTROLLER_BYTES = 2 * 1024**3


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
    max_full_controller_bytes: int = DEFAULT_MAX_FULL_CONTROLLER_BYTES,
    skip_warm_up_with_cond: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """MetaOpt as an optax transformation: `update(grads, state, params, cost_fn=f)`.

    Args:
      base_learning_rate: eta_t, a float or an optax schedule of the step count.
      weight_decay: lambda (decoupled: -lambda x_t in the update).
      grad_clip: clip the gradient to this global norm inside T (None: no clipping).
      scale_by_adam_betas: (b1, b2) to Adam-scale disturbances inside T (None: raw grads).
      H: number of past disturbances the controller acts on (>= 1).
      HH: rollout length used to learn M (>= 1).
      m_method: "scalar", "diagonal" or "full" M_i.
      meta_optimizer: optax transformation updating M (default `optax.sgd(1e-3)`).
      fake_the_dynamics: replay stored disturbances instead of recomputing gradients.
      freeze_gpc_params: deployment: M is fixed, no rollouts, only H disturbances kept.
      freeze_cost_fn_during_rollouts: real rollouts use f_t at every step (no cost history).
      counterfactual: if False, also add (y_HH - x_t) to the played update.
      dtype: storage dtype of the histories (e.g. jnp.bfloat16); M stays float32 (float64
        for float64 params) and the arithmetic runs in the params' precision.
      max_gpc_norm: project each M_i onto a ball of this radius after every meta step.
      meta_grad_clip: clip grad_M to this global norm before the meta step.
      initial_gpc_params: initial M: an array, a `load_controller` dict, or a path to a
        controller.npz (or a directory holding one).
      example_cost_fn: a cost_fn like those `update` will receive; required by real
        rollouts that replay past costs, to size the cost history at `init`.
      mesh: shard per-parameter buffers along this mesh's "opt" axis.
      initial_m0: M_0 at step 0 when no initial_gpc_params (diagonal/full: times I).
      adam_eps, adam_eps_root: Adam scaling's eps (outside / inside the square root).
      max_full_controller_bytes: refuse a "full" controller larger than this.
      skip_warm_up_with_cond: guard the controller update with `lax.cond` (skips the
        rollout during warm-up) instead of computing it and selecting the result.
    Returns:
      An `optax.GradientTransformationExtraArgs` whose state is a `MetaOptState`.

    References:
      Chen, Agarwal, Hazan, "Online control for meta-optimization", NeurIPS 2023.
    """
    if not isinstance(H, (int, np.integer)) or H < 1:
        raise ValueError(f"H (controller history length) must be an integer >= 1, got {H!r}")
    if not isinstance(HH, (int, np.integer)) or HH < 1:
        raise ValueError(f"HH (rollout length) must be an integer >= 1, got {HH!r}")
    if m_method not in M_METHODS:
        raise ValueError(f"unknown m_method {m_method!r}; choose one of {', '.join(M_METHODS)}")
    H, HH = int(H), int(HH)
    dtype = jnp.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"dtype must be a floating dtype such as float32 or bfloat16, got {dtype}")
    meta_tx = optax.sgd(1e-3) if meta_optimizer is None else meta_optimizer
    transform = disturbance_transform(grad_clip, scale_by_adam_betas, adam_eps, adam_eps_root)
    stateful_T = scale_by_adam_betas is not None
    learn = not freeze_gpc_params
    zero_lr = not callable(base_learning_rate) and float(base_learning_rate) == 0.0
    # With eta == 0 the recomputed gradients never enter the rollout (y_{k+1} does not
    # depend on v_s), so real and fake rollouts coincide: compile the cheap one.
    real = learn and not fake_the_dynamics and not zero_lr
    replay_costs = real and not freeze_cost_fn_during_rollouts and HH > 1
    K = H + HH if learn else H
    decay = 1.0 - weight_decay

    def lr_at(s, dtype=jnp.float32):
        lr = base_learning_rate(s) if callable(base_learning_rate) else base_learning_rate
        return jnp.asarray(lr, dtype)

    def init_fn(params: Any) -> MetaOptState:
        flat, _ = ravel_pytree(params)
        n = int(flat.size)
        n_pad = sharding.padded_size(n, mesh)
        if m_method == "full":
            need = H * n_pad * n_pad * 4
            if need > max_full_controller_bytes:
                raise ValueError(
                    f"a 'full' controller for {n} parameters needs H*n*n*4 = {need / 2**30:.2f}"
                    f" GiB (H={H}), above max_full_controller_bytes="
                    f"{max_full_controller_bytes / 2**30:.2f} GiB; use m_method='diagonal' or "
                    "'scalar', or raise max_full_controller_bytes if you have the memory"
                )
        cost_hist = None
        if replay_costs:
            if example_cost_fn is None:
                raise ValueError(
                    "metaopt with real rollouts replays the cost functions of past steps, so "
                    "init needs their structure: pass example_cost_fn=<a cost_fn like the ones "
                    "update will get> to metaopt(...) / make_jax(...), or set "
                    "fake_the_dynamics=True or freeze_cost_fn_during_rollouts=True"
                )
            cost_hist = tuple(
                jnp.zeros((HH,) + jnp.shape(a), jnp.result_type(a))
                for a in jax.tree.leaves(example_cost_fn)
            )
        vec = jnp.zeros((n_pad,), jnp.promote_types(flat.dtype, jnp.float32))
        t_state = transform.init(vec)
        M = initial_controller(m_method, H, n, n_pad, initial_m0, initial_gpc_params)
        M = M.astype(vec.dtype)  # float32, or float64 for float64 params
        state = MetaOptState(
            step=jnp.zeros((), jnp.int32),
            num_params=jnp.asarray(n, jnp.int32),
            disturbances=jnp.zeros((K, n_pad), dtype),
            param_history=jnp.zeros((HH, n_pad), dtype) if learn else None,
            grad_history=jnp.zeros((HH, n_pad), dtype) if real and stateful_T else None,
            cost_fn_history=cost_hist,
            transform_state=t_state,
            lagged_transform_state=t_state if real and stateful_T else None,
            M=M,
            meta_opt_state=meta_tx.init(M),
            learning_rate=jnp.zeros((), jnp.float32),
            grad_M=jnp.zeros((H,), M.dtype),
            gpc_cost=jnp.zeros((), M.dtype),
            gpc_cost_valid=jnp.zeros((), jnp.float32),
        )
        return _constrain(state, n_pad)

    def _constrain(state: MetaOptState, n_pad: int) -> MetaOptState:
        """Shards every buffer with a per-parameter axis along the mesh's "opt" axis."""
        if mesh is None:
            return state

        def pin(x):
            if getattr(x, "ndim", 0) >= 1 and x.shape[-1] == n_pad and x.size >= n_pad:
                axis = 1 if x.ndim == 3 else -1  # full M: split rows
                return sharding.constrain_opt(x, mesh, axis)
            return x

        keep = {"cost_fn_history", "step", "num_params"}
        changes = {
            f.name: jax.tree.map(pin, getattr(state, f.name))
            for f in dataclasses.fields(state)
            if f.name not in keep
        }
        return state.replace(**changes)

    def control(M, W, s):
        """sum_{i<H} M_i w_{s-i} from ring buffer W, in M's dtype.

        M is the (H,) array of a scalar controller, or the tuple of the H lags M_i of a
        diagonal/full one: differentiating w.r.t. separate lags avoids materialising a
        zero-padded (H, n) cotangent for every use of every lag.

        Written as one contraction over the ring's rows (scalar: a coefficient vector
        times W; diagonal/full: a gather of the H rows) so XLA reads W once, rather than
        H separate row slices and adds."""
        if not isinstance(M, tuple):  # scalar controller
            slots = jnp.mod(s - jnp.arange(H), K)
            coef = jnp.zeros((K,), M.dtype).at[slots].add(M)
            return coef @ W.astype(M.dtype)
        rows = [row(W, s - i).astype(M[0].dtype) for i in range(H)]
        return sum_lags(M, rows)

    def fake_end_point(M, W, x0, t, cdtype):
        """y_HH of the fake rollout, which is affine in M:

            y_HH = decay^HH x0 + sum_k c_k (-eta_s w_s + sum_i M_i w_{s-i}),
            s = t - HH + k,  c_k = decay^(HH-1-k)
                 = decay^HH x0 - b @ W + sum_i M_i Z_i,   Z = A @ W,

        with A (H x K) and b (K,) small coefficient arrays over the ring's rows. Autodiff
        of this form gives grad_M as A @ (W @ g) (scalar) or Z * g (diagonal): a couple of
        passes over W instead of H * HH row operations."""
        k = jnp.arange(HH)
        s = t - HH + k
        c = (decay ** (HH - 1 - k)).astype(cdtype)
        b = jnp.zeros((K,), cdtype).at[jnp.mod(s, K)].add(c * lr_at(s, cdtype))
        lag = jnp.arange(H)[:, None]
        A = jnp.zeros((H, K), cdtype).at[lag, jnp.mod(s[None, :] - lag, K)].add(
            jnp.broadcast_to(c, (H, HH))
        )
        Wc = W.astype(cdtype)
        if not isinstance(M, tuple):  # scalar controller
            return x0 * decay**HH + (M @ A - b) @ Wc
        Z = A @ Wc
        return x0 * decay**HH - b @ Wc + sum_lags(M, [Z[i] for i in range(H)])

    def update_fn(grads, state, params=None, *, cost_fn=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("metaopt.update needs the current params: update(grads, state, "
                             "params, cost_fn=...)")
        if learn and cost_fn is None:
            raise ValueError(
                "metaopt.update needs the loss as cost_fn=f with f(params) -> scalar (e.g. "
                "meta_opt.optimizers.make_cost_fn(loss_fn, batch)); only freeze_gpc_params=True "
                "runs without it"
            )
        if not isinstance(state, MetaOptState):
            raise TypeError(f"expected a MetaOptState, got {type(state).__name__}")
        x, unravel = ravel_pytree(params)
        g, _ = ravel_pytree(grads)
        n = int(x.size)
        n_pad = state.disturbances.shape[1]
        cdtype = jnp.promote_types(x.dtype, jnp.float32)
        x = jnp.pad(x.astype(cdtype), (0, n_pad - n))
        g = jnp.pad(g.astype(cdtype), (0, n_pad - n))
        t = state.step
        eta_t = lr_at(t, cdtype)

        def loss_at(f, y):
            return f(unravel(y[:n]))

        w, t_state = transform.update(g, state.transform_state)
        W = write(state.disturbances, t, w.astype(dtype))

        M, meta_state = state.M, state.meta_opt_state
        grad_M, gpc_cost, valid = state.grad_M, state.gpc_cost, state.gpc_cost_valid
        lagged, G = state.lagged_transform_state, state.grad_history
        cf_shift = None
        if learn:
            x0 = row(state.param_history, t - HH).astype(cdtype)  # x_{t-HH}
            if real and stateful_T:
                # T's state at t-HH+1: advance the lagged state with the stored g_{t-HH}.
                _, lag_next = transform.update(row(G, t - HH).astype(cdtype), lagged)
                lag_next = jax.tree.map(
                    lambda new, old: jnp.where(t >= HH, new, old), lag_next, lagged
                )
            else:
                lag_next = lagged

            def rollout_cost(M_):
                """C(M) = f_t(y_HH) and y_HH, replaying steps t-HH..t-1 with M_."""
                if not real:
                    y = fake_end_point(M_, W, x0, t, cdtype)
                    return loss_at(cost_fn, y), y
                # Step k = 0 starts at the recorded x_{t-HH}, where the recomputed
                # disturbance is the recorded w_{t-HH} (grads = grad f(params) by contract).
                s0 = t - HH
                base = lr_at(s0, cdtype) * row(W, s0).astype(cdtype)
                y = decay * x0 - base + control(M_, W, s0)
                if HH == 1:
                    return loss_at(cost_fn, y), y

                def step(carry, k):
                    y, ts = carry
                    s = t - HH + k
                    if replay_costs:
                        leaves = [row(h, s) for h in state.cost_fn_history]
                        f_s = jax.tree.unflatten(jax.tree.structure(cost_fn), leaves)
                    else:
                        f_s = cost_fn
                    gk = grad_hvp_transposed(loss_at, f_s, y)
                    v, ts = transform.update(gk, ts)
                    y = decay * y - lr_at(s, cdtype) * v + control(M_, W, s)
                    return (y, ts), None

                # Unrolled: HH is small, and XLA fuses across the unrolled steps.
                (y, _), _ = jax.lax.scan(step, (y, lag_next), jnp.arange(1, HH), unroll=True)
                return loss_at(cost_fn, y), y

            def learn_M(operands):
                M, meta_state = operands
                lags = M if M.ndim == 1 else tuple(M[i] for i in range(H))
                (cost, y_end), gM = jax.value_and_grad(rollout_cost, has_aux=True)(lags)
                gM = gM if M.ndim == 1 else jnp.stack(gM)
                if meta_grad_clip is not None:
                    gM = optax.clip_by_global_norm(meta_grad_clip).update(gM, None)[0]
                upd, meta_state = meta_tx.update(gM, meta_state, M)
                M = project(optax.apply_updates(M, upd), max_gpc_norm)
                return (M, meta_state, grad_summary(gM, n).astype(grad_M.dtype),
                        jnp.asarray(cost, gpc_cost.dtype), y_end - x)

            def skip(operands):
                M, meta_state = operands
                return (M, meta_state, jnp.zeros_like(grad_M), jnp.zeros_like(gpc_cost),
                        jnp.zeros_like(x))

            if cost_fn is not None and replay_costs:
                _check_cost_fn(cost_fn, state.cost_fn_history)
            ready = t >= H + HH
            if skip_warm_up_with_cond:
                M, meta_state, gm, cost, shift = jax.lax.cond(
                    ready, learn_M, skip, (M, meta_state)
                )
            else:
                # Computed every step and selected (what vmap does to a cond anyway): keeps
                # one straight-line program, without the buffer copies XLA:CPU inserts
                # around a conditional; only the H + HH warm-up steps compute in vain.
                M, meta_state, gm, cost, shift = jax.tree.map(
                    lambda a, b: jnp.where(ready, a, b),
                    learn_M((M, meta_state)),
                    skip((M, meta_state)),
                )
            grad_M = jnp.where(ready, gm, grad_M)
            gpc_cost = jnp.where(ready, cost, gpc_cost)
            valid = jnp.maximum(valid, ready.astype(jnp.float32))
            cf_shift = None if counterfactual else shift
            lagged = lag_next if real and stateful_T else lagged
            if G is not None:
                G = write(G, t, g.astype(dtype))

        # The played update, with the controller updated first.
        lags = M if M.ndim == 1 else tuple(M[i] for i in range(H))
        u = -weight_decay * x - eta_t * w + control(lags, W, t).astype(cdtype)
        if cf_shift is not None:
            u = u + cf_shift
        updates = unravel(u[:n])

        new_state = state.replace(
            step=t + 1,
            disturbances=W,
            transform_state=t_state,
            lagged_transform_state=lagged,
            grad_history=G,
            M=M,
            meta_opt_state=meta_state,
            learning_rate=eta_t.astype(jnp.float32),
            grad_M=grad_M,
            gpc_cost=gpc_cost,
            gpc_cost_valid=valid,
        )
        if learn:
            new_state = new_state.replace(
                param_history=write(state.param_history, t, x.astype(dtype))
            )
        if replay_costs:
            new_state = new_state.replace(
                cost_fn_history=tuple(
                    write(h, t, jnp.asarray(a, h.dtype))
                    for h, a in zip(state.cost_fn_history, jax.tree.leaves(cost_fn), strict=True)
                )
            )
        return updates, _constrain(new_state, n_pad)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_cost_fn(cost_fn: Any, history: tuple[jax.Array, ...]) -> None:
    leaves = jax.tree.leaves(cost_fn)
    got = [(jnp.shape(a), jnp.result_type(a)) for a in leaves]
    want = [(h.shape[1:], h.dtype) for h in history]
    if got != want:
        raise ValueError(
            "cost_fn does not match the example_cost_fn given at init: its leaves have "
            f"(shape, dtype) {got} but the cost history was built for {want}; pass an "
            "example_cost_fn with the same batch shapes as the training cost_fn"
        )


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------

_DTYPES = ("float32", "bfloat16", "float64")


@register_optimizer
@dataclasses.dataclass(frozen=True)
class MetaOptConfig(OptimizerConfig):
    """Serializable MetaOpt hyperparameters; `make_jax(example_cost_fn=, mesh=)` builds it.

    Defaults follow what worked on the digits MLP (DESIGN section 5): Adam-scaled
    disturbances, base learning rate 0, short histories (H=4, HH=2), weight decay 1e-4,
    SGD at 1e-3 on the controller; plus a nonzero M_0 = -0.01 (`initial_m0`: the method
    starts as Adam-like steps of 0.01 instead of standing still until the controller
    learns) and meta-gradient clipping at norm 1 (grad_M scales with the parameter count
    for Adam-scaled disturbances; unclipped, SGD at 1e-3 on the controller overshoots on a
    5k-parameter MLP). `meta_optimizer=None` means plain SGD at `meta_learning_rate`.
    """

    optimizer_name: ClassVar[str] = "MetaOpt"
    requires_cost_fn: ClassVar[bool] = True

    base_learning_rate: float | ScheduleConfig = 0.0
    weight_decay: float = 1e-4
    grad_clip: float | None = None
    scale_by_adam_betas: tuple[float, float] | None = (0.9, 0.999)
    H: int = 4
    HH: int = 2
    m_method: str = "scalar"
    meta_optimizer: OptimizerConfig | None = None
    meta_learning_rate: float = 1e-3
    fake_the_dynamics: bool = False
    freeze_gpc_params: bool = False
    freeze_cost_fn_during_rollouts: bool = False
    counterfactual: bool = True
    dtype: str = "float32"
    max_gpc_norm: float | None = None
    meta_grad_clip: float | None = 1.0
    initial_gpc_params: str | None = None
    initial_m0: float = -1e-2

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

    def make_jax(
        self, example_cost_fn: Any = None, mesh: Mesh | None = None
    ) -> optax.GradientTransformationExtraArgs:
        meta_tx = (
            optax.sgd(self.meta_learning_rate)
            if self.meta_optimizer is None
            else self.meta_optimizer.make_jax()
        )
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
        )

    def make_torch(self, params: Any, **kwargs: Any) -> Any:
        """The PyTorch MetaOpt (`meta_opt.torch.MetaOpt`) over `params` with these
        hyperparameters; `kwargs` override MetaOpt arguments. Needs torch installed."""
        from meta_opt.torch import metaopt_from_config

        return metaopt_from_config(self, params, **kwargs)
