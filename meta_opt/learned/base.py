"""`LearnedOptimizer`: an optimizer whose hyperparameters or weights theta are meta-learned.

A learned optimizer is a pair of pure functions: `init(key) -> theta` draws its
meta-parameters, and `opt_fn(theta, is_training=False) -> Optimizer` builds an ordinary
`meta_opt.optimizers.Optimizer` (state owns params) from them. Everything an inner
`update` computes is a differentiable function of theta, so meta-gradients flow through
unrolled training (autodiff) or are estimated with ES / PES.

The hand-designed baselines here (`LearnableSGD`, `LearnableSGDM`, `LearnableAdam`)
reuse optax: optax accepts traced scalars as hyperparameters, so `optax.adam(lr, b1, b2,
eps)` with `lr = exp(theta["log_lr"])` is already differentiable in theta.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022 (the learned_optimization library this API follows).
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
import optax

from meta_opt.optimizers.optimizer import OptaxOptimizer, Optimizer

MetaParams = Any


class LearnedOptimizer:
    """Base class: stateless; theta (a pytree of arrays) carries everything learned."""

    def init(self, key: chex.PRNGKey) -> MetaParams:
        """Draws initial meta-parameters theta."""
        raise NotImplementedError(f"{type(self).__name__} must implement init")

    def opt_fn(self, theta: MetaParams, is_training: bool = False) -> Optimizer:
        """The inner `Optimizer` defined by theta.

        Args:
          theta: meta-parameters from `init` (possibly perturbed or traced).
          is_training: True while meta-training (an optimizer may behave differently,
            e.g. add noise); the built-in ones ignore it.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement opt_fn")

    @property
    def name(self) -> str:
        """The optimizer's name in logs and error messages (the class name by default)."""
        return type(self).__name__


def _check_positive(owner: str, **values: float) -> None:
    for key, value in values.items():
        if not value > 0:
            raise ValueError(f"{owner}: {key} must be > 0, got {value!r}")


def _check_unit(owner: str, **values: float) -> None:
    for key, value in values.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{owner}: {key} must be in [0, 1), got {value!r}")


class LearnableSGD(LearnedOptimizer):
    """SGD with a meta-learned learning rate; theta = {"log_lr"}."""

    def __init__(self, initial_lr: float = 1e-3):
        _check_positive("LearnableSGD", initial_lr=initial_lr)
        self.initial_lr = initial_lr

    def init(self, key: chex.PRNGKey) -> MetaParams:
        del key
        return {"log_lr": jnp.log(jnp.asarray(self.initial_lr, jnp.float32))}

    def opt_fn(self, theta: MetaParams, is_training: bool = False) -> Optimizer:
        del is_training
        return OptaxOptimizer(optax.sgd(jnp.exp(theta["log_lr"])))


class LearnableSGDM(LearnedOptimizer):
    """SGD with heavy-ball momentum; theta = {"log_lr", "one_minus_momentum"} (log scale)."""

    def __init__(self, initial_lr: float = 1e-3, initial_momentum: float = 0.9):
        _check_positive("LearnableSGDM", initial_lr=initial_lr)
        _check_unit("LearnableSGDM", initial_momentum=initial_momentum)
        self.initial_lr, self.initial_momentum = initial_lr, initial_momentum

    def init(self, key: chex.PRNGKey) -> MetaParams:
        del key
        return {
            "log_lr": jnp.log(jnp.asarray(self.initial_lr, jnp.float32)),
            "one_minus_momentum": jnp.log(jnp.asarray(1.0 - self.initial_momentum, jnp.float32)),
        }

    def opt_fn(self, theta: MetaParams, is_training: bool = False) -> Optimizer:
        del is_training
        momentum = 1.0 - jnp.exp(theta["one_minus_momentum"])
        return OptaxOptimizer(optax.sgd(jnp.exp(theta["log_lr"]), momentum=momentum))


class LearnableAdam(LearnedOptimizer):
    """Adam with meta-learned hyperparameters.

    theta = {"log_lr", "one_minus_beta1", "one_minus_beta2", "log_epsilon"}, where the
    "one_minus" entries hold log(1 - beta): unconstrained reals that keep beta in (0, 1).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def __init__(
        self,
        initial_lr: float = 1e-3,
        initial_beta1: float = 0.9,
        initial_beta2: float = 0.999,
        initial_epsilon: float = 1e-8,
    ):
        _check_positive("LearnableAdam", initial_lr=initial_lr, initial_epsilon=initial_epsilon)
        _check_unit("LearnableAdam", initial_beta1=initial_beta1, initial_beta2=initial_beta2)
        self.initial_lr, self.initial_epsilon = initial_lr, initial_epsilon
        self.initial_beta1, self.initial_beta2 = initial_beta1, initial_beta2

    def init(self, key: chex.PRNGKey) -> MetaParams:
        del key
        f = lambda v: jnp.asarray(v, jnp.float32)
        return {
            "log_lr": jnp.log(f(self.initial_lr)),
            "one_minus_beta1": jnp.log(f(1.0 - self.initial_beta1)),
            "one_minus_beta2": jnp.log(f(1.0 - self.initial_beta2)),
            "log_epsilon": jnp.log(f(self.initial_epsilon)),
        }

    def opt_fn(self, theta: MetaParams, is_training: bool = False) -> Optimizer:
        del is_training
        return OptaxOptimizer(
            optax.adam(
                jnp.exp(theta["log_lr"]),
                b1=1.0 - jnp.exp(theta["one_minus_beta1"]),
                b2=1.0 - jnp.exp(theta["one_minus_beta2"]),
                eps=jnp.exp(theta["log_epsilon"]),
                # sqrt has an infinite derivative at 0: a coordinate whose gradient is
                # always zero would give NaN meta-gradients without this tiny offset.
                eps_root=1e-30,
            )
        )
