"""D-Adaptation AdamW and Prodigy with a float-safe distance estimate.

Both methods estimate the distance to the solution D as a ratio,
d_hat = numerator_weighted / |grad_sum|_1 (times constants), and keep the running maximum
of it as the step size. `optax.contrib.dadapt_adamw` and `optax.contrib.prodigy` compute
that ratio unguarded, which turns into NaN in two situations we hit in practice:

- **All gradients zero so far** (a flat region, e.g. De Jong's step function, a dead ReLU
  net, or a learning-rate schedule at 0): numerator and denominator are both 0, d_hat =
  0/0 = NaN, `max(estim_lr, NaN) = NaN`, and every later update is NaN. For Prodigy even
  the first update is NaN, since its Adam denominator uses the new estimate.
- **Overflow**: when the gradient does not shrink (e.g. the iterate is pinned against a
  box by projection, so the problem looks linear), the estimate keeps growing
  geometrically, as it should without a minimiser; the numerator, which grows like its
  square, overflows float32 after ~150 steps, giving estim_lr = inf and then inf/inf =
  NaN (D-Adaptation AdamW on Schwefel in `meta-opt bench synthetic`).

Upstream: `optax.contrib.dadapt_adamw` and `optax.contrib.prodigy` were ported from the
reference PyTorch implementations (google-deepmind/optax#651). The reference D-Adaptation
code had the same 0/0 on a step without gradients (facebookresearch/dadaptation#4,
"ZeroDivisionError: float division by zero", fixed there by facebookresearch/dadaptation#13,
"Bugfix/call with no grads"); the port computes the ratio unguarded again, and no optax
issue or fix exists for it (searched google-deepmind/optax's issues, optax 0.2.8). The
defects are pinned on optax's own versions by
`test_dadaptation_zero_gradients_keep_the_estimate_where_optax_gives_nan` (both methods,
all-zero gradients), `test_prodigy_warmup_from_zero_is_nan_in_optax_and_finite_here` (a
schedule starting at 0) and the Schwefel benchmark test (overflow), all in
`tests/optimizers/test_baseline_configs.py`.

The variants here are optax's code line for line with one guard: when the step's new
D-estimation statistics (`grad_sum`, `numerator_weighted`, `estim_lr`) are not all finite,
they keep their previous values (the Adam moments still advance). Whenever optax's new
state is finite these are the same float operations as optax's: bit-for-bit equal op by op
(eager), and equal to rounding under `jit` (XLA may fuse the two programs differently, as
it does jitted vs eager optax); pinned in `tests/optimizers/test_baseline_configs.py`. On
all-zero gradients the estimate stays at `estim_lr0` and the update is exactly zero (plus
weight decay, if any). The states are optax's own `DAdaptAdamWState` / `ProdigyState`.

References:
  Defazio & Mishchenko, `Learning-Rate-Free Learning by D-Adaptation
  <https://arxiv.org/abs/2301.07733>`_, ICML 2023;
  Mishchenko & Defazio, `Prodigy: An Expeditiously Adaptive Parameter-Free Learner
  <https://arxiv.org/abs/2306.06101>`_, ICML 2024
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax import contrib

__all__ = ["dadapt_adamw", "prodigy"]

_NO_PARAMS_MSG = (
    "D-Adaptation / Prodigy need the params: call update(grads, state, params), got params=None"
)


def _all_finite(*trees) -> jax.Array:
    """True iff every leaf of every tree is finite (a scalar bool array)."""
    leaves = jax.tree.leaves(trees)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def _keep_if(ok: jax.Array, new, old):
    """`new` where `ok`, else `old` (leafwise; exact: no arithmetic on the kept values)."""
    return jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)


def dadapt_adamw(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    """`optax.contrib.dadapt_adamw` whose D estimate never becomes NaN (see module docs).

    Args:
      learning_rate: multiplier (or schedule) of the adapted step; keep its peak at 1.
      betas: Adam's (b1, b2).
      eps: Adam's epsilon.
      estim_lr0: initial (under-)estimate of D.
      weight_decay: decoupled (AdamW) weight decay.

    Returns:
      The transformation; its state is `optax.contrib.DAdaptAdamWState`.
    """
    beta1, beta2 = betas
    sb2 = beta2**0.5
    inner = contrib.dadapt_adamw(learning_rate, betas, eps, estim_lr0, weight_decay)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS_MSG)
        # Copied from optax 0.2.8 (the ratio is inside its update_fn, so it cannot be
        # wrapped); only the last block, the guard, is new.
        count = state.count
        sched = learning_rate(count) if callable(learning_rate) else learning_rate
        count_inc = optax.safe_increment(count)
        bc = ((1 - beta2**count_inc) ** 0.5) / (1 - beta1**count_inc)
        dlr = (state.estim_lr * sched * bc).astype(state.numerator_weighted.dtype)
        s_weighted = jax.tree.map(
            lambda sk, eas: sk / (jnp.sqrt(eas) + eps), state.grad_sum, state.exp_avg_sq
        )
        numerator_acum = optax.tree.vdot(updates, s_weighted)
        exp_avg = jax.tree.map(
            lambda ea, g: beta1 * ea + (1 - beta1) * dlr * g, state.exp_avg, updates
        )
        exp_avg_sq = jax.tree.map(
            lambda eas, g: beta2 * eas + (1 - beta2) * g * g, state.exp_avg_sq, updates
        )
        grad_sum = jax.tree.map(
            lambda sk, g: sb2 * sk + (1 - sb2) * dlr * g, state.grad_sum, updates
        )
        grad_sum_l1 = optax.tree.sum(jax.tree.map(jnp.abs, grad_sum))
        numerator_weighted = sb2 * state.numerator_weighted + (1 - sb2) * dlr * numerator_acum
        d_estimate = numerator_weighted / ((1 - sb2) * grad_sum_l1)
        estim_lr = jnp.maximum(state.estim_lr, d_estimate)
        # The guard: 0/0 (no gradient yet) or overflow leaves the D statistics unchanged.
        ok = _all_finite(grad_sum, numerator_weighted, estim_lr)
        grad_sum, numerator_weighted, estim_lr = _keep_if(
            ok,
            (grad_sum, numerator_weighted, estim_lr),
            (state.grad_sum, state.numerator_weighted, state.estim_lr),
        )
        p_update = jax.tree.map(
            lambda ea, eas, p: -weight_decay * dlr * p - ea / (jnp.sqrt(eas) + eps),
            exp_avg,
            exp_avg_sq,
            params,
        )
        new_state = contrib.DAdaptAdamWState(
            exp_avg, exp_avg_sq, grad_sum, estim_lr, numerator_weighted, count_inc
        )
        return p_update, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)


def prodigy(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    betas: tuple[float, float] = (0.9, 0.999),
    beta3: float | None = None,
    eps: float = 1e-8,
    estim_lr0: float = 1e-6,
    estim_lr_coef: float = 1.0,
    weight_decay: float = 0.0,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformationExtraArgs:
    """`optax.contrib.prodigy` whose D estimate never becomes NaN (see module docs).

    Args:
      learning_rate: multiplier (or schedule) of the adapted step; keep its peak at 1.
      betas: Adam's (b1, b2).
      beta3: decay of the D statistics; None means sqrt(b2).
      eps: Adam's epsilon (scaled by the estimate, as in optax).
      estim_lr0: initial (under-)estimate of D.
      estim_lr_coef: multiplier of the D estimate.
      weight_decay: decoupled (AdamW) weight decay.
      safeguard_warmup: leave the learning rate out of the denominator's statistics.

    Returns:
      The transformation; its state is `optax.contrib.ProdigyState`.
    """
    beta1, beta2 = betas
    if beta3 is None:
        beta3 = beta2**0.5
    inner = contrib.prodigy(
        learning_rate,
        betas,
        beta3,
        eps,
        estim_lr0,
        estim_lr_coef,
        weight_decay,
        safeguard_warmup,
    )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(_NO_PARAMS_MSG)
        # Copied from optax 0.2.8 (the ratio is inside its update_fn, so it cannot be
        # wrapped); only the guard block is new.
        count = state.count
        count_inc = optax.safe_increment(count)
        sched = learning_rate(count) if callable(learning_rate) else learning_rate
        estim_lr = state.estim_lr
        bc = ((1 - beta2**count_inc) ** 0.5) / (1 - beta1**count_inc)
        dlr = jnp.asarray(estim_lr * sched * bc, dtype=estim_lr.dtype)
        dg = jax.tree.map(lambda g: estim_lr * g, updates)
        param_diff = jax.tree.map(lambda p0, p: p0 - p, state.params0, params)
        numerator_acum = optax.tree.vdot(updates, param_diff)
        exp_avg = jax.tree.map(lambda ea, dgk: beta1 * ea + (1 - beta1) * dgk, state.exp_avg, dg)
        exp_avg_sq = jax.tree.map(
            lambda eas, dgk: beta2 * eas + (1 - beta2) * dgk * dgk, state.exp_avg_sq, dg
        )
        if safeguard_warmup:
            grad_sum = jax.tree.map(
                lambda sk, dgk: beta3 * sk + estim_lr * dgk / estim_lr0, state.grad_sum, dg
            )
        else:
            grad_sum = jax.tree.map(
                lambda sk, dgk: beta3 * sk + dlr * dgk / estim_lr0, state.grad_sum, dg
            )
        numerator_weighted = beta3 * state.numerator_weighted
        numerator_weighted += (estim_lr / estim_lr0) * dlr * numerator_acum
        denominator = optax.tree.sum(jax.tree.map(jnp.abs, grad_sum))
        lr_estimate = estim_lr_coef * numerator_weighted / denominator
        estim_lr = jnp.maximum(state.estim_lr, lr_estimate)
        # The guard: 0/0 (no gradient yet) or overflow leaves the D statistics unchanged.
        ok = _all_finite(grad_sum, numerator_weighted, estim_lr)
        grad_sum, numerator_weighted, estim_lr = _keep_if(
            ok,
            (grad_sum, numerator_weighted, estim_lr),
            (state.grad_sum, state.numerator_weighted, state.estim_lr),
        )
        p_update = jax.tree.map(
            lambda ea, eas, p: (
                -weight_decay * dlr * p - dlr * ea / (jnp.sqrt(eas) + estim_lr * eps)
            ),
            exp_avg,
            exp_avg_sq,
            params,
        )
        new_state = contrib.ProdigyState(
            exp_avg,
            exp_avg_sq,
            grad_sum,
            state.params0,
            estim_lr,
            numerator_weighted,
            count_inc,
        )
        return p_update, new_state

    return optax.GradientTransformationExtraArgs(inner.init, update_fn)
