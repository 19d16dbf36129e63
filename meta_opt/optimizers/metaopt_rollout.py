"""MetaOpt's counterfactual rollout: the controller cost C(M) as a pure function.

At step t the controller is scored by replaying the last HH steps from x_{t-HH} with the
current M and evaluating the current cost at the end point:

    y_0 = x_{t-HH};  for k = 0..HH-1, s = t-HH+k:
        y_{k+1} = (1 - lambda_s) y_k - eta_s v_s + sum_{i<H} M_i * w_{s-i}
    C(M) = f_t(y_HH)

The control term always uses the recorded disturbances w (GPC's controller acts on the
disturbance sequence, which does not depend on M); eta_s and lambda_s are the recorded
values of the replayed step. What v_s is depends on the mode; `first_rollout_step` is the
one place that decides what the first step (k = 0) uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from meta_opt.optimizers.cost_fn import is_array_leaf
from meta_opt.optimizers.metaopt_controller import Lags, control, sum_lags
from meta_opt.optimizers.metaopt_ring import row

# evaluate(f, y): the cost function f at the flat (padded) point y.
Evaluate = Callable[[Any, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
    """Static shape of the rollouts, fixed when the transformation is built.

    Attributes:
      H: number of controller lags.
      HH: rollout length.
      transform: the disturbance transform T.
      real: recompute the disturbances along the rollout (False: "fake", replay the
        recorded ones; the end point is then affine in M).
      freeze_cost: real rollouts use the current cost f_t at every step instead of
        replaying the recorded f_s.
      learning_rate: eta when it is a constant known at build time (a Python number);
        None: the rollout reads the recorded eta_s (a schedule, an injected value).
      weight_decay: likewise for lambda. (Constants compile to simpler programs: a
        rollout step scaled by a traced 1 - lambda costs XLA:CPU about one extra
        gradient evaluation, measured on the digits MLP.)
    """

    H: int
    HH: int
    transform: optax.GradientTransformation
    real: bool
    freeze_cost: bool
    learning_rate: float | None = None
    weight_decay: float | None = None

    @property
    def records_learning_rates(self) -> bool:
        """Whether the rollout reads recorded eta_s (so the state records them)."""
        return self.learning_rate is None

    @property
    def records_weight_decays(self) -> bool:
        """Whether the rollout reads recorded lambda_s (so the state records them)."""
        return self.weight_decay is None

    @property
    def replays_costs(self) -> bool:
        """Whether the rollout evaluates past cost functions (so the state records them)."""
        return self.real and not self.freeze_cost and self.HH > 1

    @property
    def needs_start_transform_state(self) -> bool:
        """Whether the rollout applies T (so it needs T's state of step t-HH)."""
        return self.real and (self.freeze_cost or self.HH > 1)


class RolloutHistory(NamedTuple):
    """What the rollout at step t reads; all of it was recorded before step t.

    Attributes:
      step: t.
      start: x_{t-HH}, the rollout's starting point (flat, padded, compute dtype).
      disturbances: the (H+HH, n_pad) ring of w_s (row t-i holds w_{t-i}).
      learning_rates: the (HH,) ring of the played eta_s (None when eta is a constant).
      weight_decays: the (HH,) ring of the played lambda_s (None when constant).
      start_grad: g_{t-HH}, the gradient recorded at `start` (None unless the rollout
        advances a stateful T from step t-HH with it).
      start_transform_state: T's state before step t-HH (None unless the rollout
        applies T).
      cost_fns: the rings of the leaves of the recorded f_s (None unless replayed).
    """

    step: jax.Array
    start: jax.Array
    disturbances: jax.Array
    learning_rates: jax.Array | None
    weight_decays: jax.Array | None
    start_grad: jax.Array | None
    start_transform_state: Any
    cost_fns: tuple[jax.Array, ...] | None


def rollout_cost(
    lags: Lags, history: RolloutHistory, cost_fn: Any, spec: RolloutSpec, evaluate: Evaluate
) -> tuple[jax.Array, jax.Array]:
    """C(M) = f_t(y_HH) and y_HH: replays steps t-HH..t-1 with the controller `lags`."""
    if spec.real:
        y = real_end_point(lags, history, cost_fn, spec, evaluate)
    else:
        y = fake_end_point(lags, history, spec)
    return evaluate(cost_fn, y), y


def first_rollout_step(
    history: RolloutHistory, cost_fn: Any, spec: RolloutSpec, evaluate: Evaluate
) -> tuple[jax.Array, Any]:
    """v_{t-HH}, the disturbance of the first rollout step (k = 0, at y_0 = x_{t-HH}), and
    T's state after it (the state the step k = 1 starts from).

    - fake rollouts: the recorded w_{t-HH} (as at every fake step; T is not applied).
    - real rollouts replaying past costs: the recorded w_{t-HH}. It equals the recomputed
      T_{t-HH}(grad f_{t-HH}(x_{t-HH})) because `grads` is the gradient of `cost_fn` at
      `params` by contract, so no gradient is evaluated; T's state after it is T's state
      at step t-HH advanced with the recorded g_{t-HH}, i.e. T's recorded state at t-HH+1.
    - real rollouts with `freeze_cost_fn_during_rollouts`: recomputed with the current
      cost, T_{t-HH}(grad f_t(x_{t-HH})), from T's state at step t-HH; that state advances
      with this recomputed gradient, as at every later rollout step.
    y_0 does not depend on M, so nothing here is differentiated.
    """
    s0 = history.step - spec.HH
    recorded = row(history.disturbances, s0).astype(history.start.dtype)
    if not spec.real:
        return recorded, None
    if spec.freeze_cost:
        g = jax.grad(lambda y: evaluate(cost_fn, y))(history.start)
        return spec.transform.update(g, history.start_transform_state)
    return recorded, advance_transform_state(spec.transform, history.start_transform_state,
                                             history.start_grad)


def advance_transform_state(
    transform: optax.GradientTransformation, state: Any, grad: jax.Array | None
) -> Any:
    """T's state after applying T to `grad` (unchanged when T is stateless, grad None)."""
    if state is None or grad is None:
        return state
    return transform.update(grad, state)[1]


def real_end_point(
    lags: Lags, history: RolloutHistory, cost_fn: Any, spec: RolloutSpec, evaluate: Evaluate
) -> jax.Array:
    """y_HH of a real rollout: steps k >= 1 recompute v_s = T_s(grad f_s(y_k)), with T's
    state carried along the rollout and f_s the recorded cost of step s (or f_t)."""
    t, HH = history.step, spec.HH
    v, t_state = first_rollout_step(history, cost_fn, spec, evaluate)
    y = _rollout_step(lags, history, spec, history.start, v, t - HH)
    if HH == 1:
        return y

    def step(carry, k):
        y, t_state = carry
        s = t - HH + k
        f_s = cost_fn if spec.freeze_cost else recorded_cost_fn(history, cost_fn, s)
        v, t_state = spec.transform.update(grad_hvp_transposed(evaluate, f_s, y), t_state)
        return (_rollout_step(lags, history, spec, y, v, s), t_state), None

    # Unrolled: HH is small, and XLA fuses across the unrolled steps.
    (y, _), _ = jax.lax.scan(step, (y, t_state), jnp.arange(1, HH), unroll=True)
    return y


def _rollout_step(lags: Lags, history: RolloutHistory, spec: RolloutSpec, y: jax.Array,
                  v: jax.Array, s: jax.Array) -> jax.Array:
    """y_{k+1} = (1 - lambda_s) y_k - eta_s v_s + sum_i M_i * w_{s-i}."""
    eta, decay = replayed_rates(history, spec, s, y.dtype)
    return decay * y - eta * v + control(lags, history.disturbances, s).astype(y.dtype)


def replayed_rates(history: RolloutHistory, spec: RolloutSpec, s: jax.Array,
                   dtype: Any) -> tuple[jax.Array, jax.Array]:
    """eta_s and 1 - lambda_s of the replayed step(s) s: the build-time constants, or the
    values recorded when step s was played."""
    def value(constant, ring):
        if constant is not None:
            return jnp.full(jnp.shape(s), constant, dtype)
        return jnp.take(ring, jnp.mod(s, spec.HH)).astype(dtype)

    return (value(spec.learning_rate, history.learning_rates),
            1 - value(spec.weight_decay, history.weight_decays))


def recorded_cost_fn(history: RolloutHistory, cost_fn: Any, s: jax.Array) -> Any:
    """f_s rebuilt from the cost history (same tree structure as the current `cost_fn`)."""
    leaves = [row(h, s) for h in history.cost_fns]
    return jax.tree.unflatten(jax.tree.structure(cost_fn), leaves)


def fake_end_point(lags: Lags, history: RolloutHistory, spec: RolloutSpec) -> jax.Array:
    """y_HH of the fake rollout (v_s = w_s), which is affine in M:

        y_HH = D_0 x_{t-HH} + sum_k c_k (-eta_s w_s + sum_i M_i w_{s-i}),
        s = t - HH + k,  c_k = prod_{j > k} (1 - lambda_{t-HH+j}),  D_0 = prod_j (1 - lambda)
             = D_0 x_{t-HH} - b @ W + sum_i M_i Z_i,   Z = A @ W,

    with A (H x K) and b (K,) small coefficient arrays over the ring's K rows. Autodiff of
    this form gives grad_M as A @ (W @ g) (scalar) or Z * g (diagonal): a couple of passes
    over W instead of H * HH row operations."""
    H, HH = spec.H, spec.HH
    W = history.disturbances
    K = W.shape[0]
    cdtype = history.start.dtype
    s = history.step - HH + jnp.arange(HH)
    eta, decay = replayed_rates(history, spec, s, cdtype)
    tail = jnp.cumprod(decay[::-1])[::-1]  # prod_{j >= k} decay_j
    c = jnp.concatenate([tail[1:], jnp.ones((1,), cdtype)])
    b = jnp.zeros((K,), cdtype).at[jnp.mod(s, K)].add(c * eta)
    lag = jnp.arange(H)[:, None]
    A = jnp.zeros((H, K), cdtype).at[lag, jnp.mod(s[None, :] - lag, K)].add(
        jnp.broadcast_to(c, (H, HH))
    )
    Wc = W.astype(cdtype)
    x0 = tail[0] * history.start
    if not isinstance(lags, tuple):  # scalar controller
        return x0 + (lags @ A - b) @ Wc
    Z = A @ Wc
    return x0 - b @ Wc + sum_lags(lags, [Z[i] for i in range(H)])


def grad_hvp_transposed(evaluate: Evaluate, f: Any, y: jax.Array) -> jax.Array:
    """grad_y evaluate(f, y), whose reverse-mode derivative is a forward-over-reverse
    Hessian-vector product.

    The real rollout differentiates through gradient evaluations. By symmetry of the
    Hessian, the vector-Jacobian product of y -> grad f(y) equals the Jacobian-vector
    product, and `jax.jvp` of the gradient costs about one gradient evaluation here,
    while reverse-over-reverse costs ~1.7 (measured on the digits MLP) and keeps the
    forward residuals alive. `f` (the cost: batch, rng, ...) is not differentiated.

    A `jax.custom_vjp` cannot close over traced values, so `f` must hand them over as its
    pytree leaves; a cost with other leaves (a plain callable, which may close over
    anything) is differentiated by plain reverse-over-reverse autodiff instead.
    """
    leaves, treedef = jax.tree.flatten(f)
    if not all(is_array_leaf(a) for a in leaves):
        return jax.grad(lambda y_: evaluate(f, y_))(y)

    def grad_fn(leaves, y):
        return jax.grad(lambda y_: evaluate(jax.tree.unflatten(treedef, leaves), y_))(y)

    @jax.custom_vjp
    def g(leaves, y):
        return grad_fn(leaves, y)

    def fwd(leaves, y):
        return grad_fn(leaves, y), (leaves, y)

    def bwd(res, ct):
        leaves, y = res
        hvp = jax.jvp(lambda y_: grad_fn(leaves, y_), (y,), (ct,))[1]
        zero = [np.zeros(np.shape(a), jax.dtypes.float0)
                if not jnp.issubdtype(jnp.result_type(a), jnp.inexact) else jnp.zeros_like(a)
                for a in leaves]
        return zero, hvp

    g.defvjp(fwd, bwd)
    return g(leaves, y)
