"""Hypergradient descent: SGD and Adam that learn their own learning rate online.

The learning rate alpha is itself updated by gradient descent on the loss: the derivative of
f(theta_t) with respect to alpha_{t-1} is -g_t . d_{t-1}, where d_{t-1} is the direction of
the previous step (theta_t = theta_{t-1} - alpha d_{t-1}). So, with hypergradient learning
rate beta,

    alpha_t = alpha_{t-1} + beta * g_t . d_{t-1}

and the step played is -alpha_t d_t, with d_t = g_t (SGD-HD) or the bias-corrected Adam
direction m_hat_t / (sqrt(v_hat_t) + eps) (Adam-HD). alpha grows while successive steps
agree with the new gradient and shrinks when they overshoot.

optax has no hypergradient optimizers, hence this hand-written module. The state keeps the
current learning rate (`state.learning_rate`, a scalar worth logging), the previous direction
d_{t-1} and, for Adam-HD, the moments.

References:
  Baydin et al., `Online Learning Rate Adaptation with Hypergradient Descent
  <https://arxiv.org/abs/1703.04782>`_, ICLR 2018 (Algorithms 1 and 3)
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from meta_opt.optimizers.baselines import with_grad_clip
from meta_opt.optimizers.config import OptimizerConfig, register_optimizer

__all__ = ["AdamHDConfig", "HypergradientState", "SGDHDConfig", "adam_hd", "sgd_hd"]


class HypergradientState(NamedTuple):
    """State of `sgd_hd` and `adam_hd`.

    Attributes:
      count: number of updates so far (int32), used for Adam's bias correction.
      learning_rate: the current learning rate alpha_t (float32 scalar or wider).
      prev_direction: d_{t-1}, the direction of the last step (zeros before the first).
      mu: Adam's first moment (an empty tuple for SGD-HD).
      nu: Adam's second moment (an empty tuple for SGD-HD).
    """

    count: jax.Array
    learning_rate: jax.Array
    prev_direction: optax.Updates
    mu: optax.Updates
    nu: optax.Updates


def _scalar_dtype(params: optax.Params) -> jnp.dtype:
    # alpha accumulates many small increments beta * h; keep it at least float32 even when
    # the params are bfloat16 so it does not stall at the resolution of a 8-bit mantissa.
    return jnp.promote_types(optax.tree.dtype(params, "highest"), jnp.float32)


def _hypergradient_step(
    learning_rate: jax.Array, hyper_lr: float, grads: optax.Updates, prev_direction
) -> jax.Array:
    """alpha_t = alpha_{t-1} + beta * g_t . d_{t-1} (one gradient step on alpha)."""
    h = optax.tree.vdot(grads, prev_direction)
    return learning_rate + jnp.asarray(hyper_lr * h, learning_rate.dtype)


def _scale(alpha: jax.Array, direction: optax.Updates) -> optax.Updates:
    """-alpha * d, returned in each leaf's own dtype."""
    return jax.tree.map(lambda d: (-alpha * d).astype(d.dtype), direction)


def sgd_hd(learning_rate: float = 0.1, hyper_lr: float = 1e-3) -> optax.GradientTransformation:
    """SGD whose learning rate follows the hypergradient (SGD-HD).

    Args:
      learning_rate: the initial learning rate alpha_0.
      hyper_lr: beta, the learning rate of alpha. Its scale is that of 1 / |g|^2.

    Returns:
      An optax transformation; its state is a `HypergradientState`.

    References:
      Baydin et al., 2018, Algorithm 1 (arXiv:1703.04782)
    """

    def init_fn(params):
        return HypergradientState(
            count=jnp.zeros([], jnp.int32),
            learning_rate=jnp.asarray(learning_rate, _scalar_dtype(params)),
            prev_direction=optax.tree.zeros_like(params),
            mu=(),
            nu=(),
        )

    def update_fn(updates, state, params=None):
        del params
        alpha = _hypergradient_step(state.learning_rate, hyper_lr, updates, state.prev_direction)
        new_state = HypergradientState(
            count=optax.safe_increment(state.count),
            learning_rate=alpha,
            prev_direction=updates,
            mu=(),
            nu=(),
        )
        return _scale(alpha, updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def adam_hd(
    learning_rate: float = 1e-3,
    hyper_lr: float = 1e-7,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformation:
    """Adam whose learning rate follows the hypergradient (Adam-HD).

    The hypergradient uses the previous bias-corrected Adam direction
    d_{t-1} = m_hat_{t-1} / (sqrt(v_hat_{t-1}) + eps), the quantity the previous step scaled.

    Args:
      learning_rate: the initial learning rate alpha_0.
      hyper_lr: beta, the learning rate of alpha (the paper uses 1e-7 for Adam-HD: h sums
        |g| over all parameters, so beta shrinks with model size).
      b1: decay of the first moment.
      b2: decay of the second moment.
      eps: added to sqrt(v_hat) in the denominator.

    Returns:
      An optax transformation; its state is a `HypergradientState`.

    References:
      Baydin et al., 2018, Algorithm 3 (arXiv:1703.04782);
      Kingma & Ba, `Adam: A Method for Stochastic Optimization
      <https://arxiv.org/abs/1412.6980>`_, 2015
    """

    def init_fn(params):
        return HypergradientState(
            count=jnp.zeros([], jnp.int32),
            learning_rate=jnp.asarray(learning_rate, _scalar_dtype(params)),
            prev_direction=optax.tree.zeros_like(params),
            mu=optax.tree.zeros_like(params),
            nu=optax.tree.zeros_like(params),
        )

    def update_fn(updates, state, params=None):
        del params
        alpha = _hypergradient_step(state.learning_rate, hyper_lr, updates, state.prev_direction)
        count = optax.safe_increment(state.count)
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        direction = jax.tree.map(
            lambda m, v, g: (m / (jnp.sqrt(v) + eps)).astype(g.dtype), mu_hat, nu_hat, updates
        )
        new_state = HypergradientState(
            count=count, learning_rate=alpha, prev_direction=direction, mu=mu, nu=nu
        )
        return _scale(alpha, direction), new_state

    return optax.GradientTransformation(init_fn, update_fn)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class SGDHDConfig(OptimizerConfig):
    """SGD-HD (`sgd_hd`): `learning_rate` is alpha_0, `hyper_lr` is beta.

    References:
      Baydin et al., 2018 (arXiv:1703.04782)
    """

    optimizer_name: ClassVar[str] = "SGDHD"
    learning_rate: float = 0.1
    hyper_lr: float = 1e-3
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "grad_clip")
        self.check_nonnegative("hyper_lr")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        return with_grad_clip(sgd_hd(self.learning_rate, self.hyper_lr), self.grad_clip)


@register_optimizer
@dataclasses.dataclass(frozen=True)
class AdamHDConfig(OptimizerConfig):
    """Adam-HD (`adam_hd`): `learning_rate` is alpha_0, `hyper_lr` is beta.

    References:
      Baydin et al., 2018 (arXiv:1703.04782)
    """

    optimizer_name: ClassVar[str] = "AdamHD"
    learning_rate: float = 1e-3
    hyper_lr: float = 1e-7
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float | None = None

    def validate(self) -> None:
        self.check_positive("learning_rate", "eps", "grad_clip")
        self.check_nonnegative("hyper_lr")
        self.check_in_unit_interval("b1", "b2")

    def make_jax(self) -> optax.GradientTransformationExtraArgs:
        tx = adam_hd(self.learning_rate, self.hyper_lr, self.b1, self.b2, self.eps)
        return with_grad_clip(tx, self.grad_clip)
