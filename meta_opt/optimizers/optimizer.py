"""The stateful Optimizer API (state owns the params) and its bridge to optax, both ways.

learned_optimization's vocabulary: an `Optimizer` is a stateless object whose `init`
wraps params (and model state) into an optimizer state and whose `update` maps
(state, grads, loss) to the next state. Learned optimizers produce `Optimizer`s from
their weights theta, so meta-gradients flow through `update`. Every optax
transformation becomes an `Optimizer` through `OptaxOptimizer`, and every `Optimizer`
becomes an optax transformation through `to_optax`.

The flows of the learned_optimization tutorial run as written (see
tests/optimizers/test_optimizer_api.py): `opt.init(params)`, `opt.update(state, grads, loss)`,
`opt.get_params(state)` / `get_params_state(state)`, jitting a whole train step that closes
over `opt`, and custom subclasses that call `super().__init__()` and bring their own
`flax.struct.dataclass` state.

References:
  Metz et al., "Practical tradeoffs between memory, compute, and performance in learned
  optimizers", CoLLAs 2022 (learned_optimization, whose Optimizer API this mirrors).
"""

from __future__ import annotations

from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import optax

Params = Any
ModelState = Any
OptState = Any


class Optimizer:
    """Base class: stateless; all state lives in the pytree returned by `init`.

    Subclasses implement `init` and `update`. The default accessors expect a state with
    `params` and `state` (model state) fields and a `replace` method (a
    `flax.struct.dataclass`); override `get_params` / `get_state` / `set_params` otherwise.
    Hyperparameters may be traced arrays (e.g. built from a learned optimizer's theta), so
    meta-gradients flow through `update`.
    """

    def __init__(self) -> None:
        pass

    def init(
        self,
        params: Params,
        model_state: ModelState = None,
        num_steps: int | None = None,
        key: chex.PRNGKey | None = None,
    ) -> OptState:
        """The initial state holding `params` and `model_state` (num_steps: the horizon)."""
        raise NotImplementedError(f"{type(self).__name__} must implement init")

    def update(
        self,
        opt_state: OptState,
        grad: Params,
        loss: jax.Array | None = None,
        model_state: ModelState = None,
        key: chex.PRNGKey | None = None,
        **kwargs: Any,
    ) -> OptState:
        """The next state after one step on `grad` (and the `loss` it came with)."""
        raise NotImplementedError(f"{type(self).__name__} must implement update")

    def get_params(self, opt_state: OptState) -> Params:
        """The params held in `opt_state`."""
        return opt_state.params

    def get_state(self, opt_state: OptState) -> ModelState:
        """The model state (e.g. batch-norm statistics) held in `opt_state`."""
        return opt_state.state

    def get_params_state(self, opt_state: OptState) -> tuple[Params, ModelState]:
        """(params, model state) of `opt_state`."""
        return self.get_params(opt_state), self.get_state(opt_state)

    def set_params(self, opt_state: OptState, params: Params) -> OptState:
        """`opt_state` holding `params` instead of its own."""
        return opt_state.replace(params=params)

    @property
    def name(self) -> str:
        """A readable name for logs (the class name)."""
        return type(self).__name__


@flax.struct.dataclass
class OptaxState:
    """State of an `OptaxOptimizer`: params, model state, the optax state and a step count."""

    params: Params
    state: ModelState
    optax_opt_state: optax.OptState
    iteration: jax.Array


class OptaxOptimizer(Optimizer):
    """Any optax transformation as an `Optimizer`; `loss` is passed to it as `value`."""

    def __init__(self, opt: optax.GradientTransformation):
        super().__init__()
        self.opt = optax.with_extra_args_support(opt)

    def init(self, params, model_state=None, num_steps=None, key=None) -> OptaxState:
        return OptaxState(
            params=params,
            state=model_state,
            optax_opt_state=self.opt.init(params),
            iteration=jnp.asarray(0, dtype=jnp.int32),
        )

    def update(self, opt_state, grad, loss=None, model_state=None, key=None, **kwargs):
        extra = dict(kwargs)
        if loss is not None:
            extra.setdefault("value", loss)
        updates, new_optax_state = self.opt.update(
            grad, opt_state.optax_opt_state, opt_state.params, **extra
        )
        return OptaxState(
            params=optax.apply_updates(opt_state.params, updates),
            state=model_state if model_state is not None else opt_state.state,
            optax_opt_state=new_optax_state,
            iteration=opt_state.iteration + 1,
        )


class SGD(OptaxOptimizer):
    """Plain stochastic gradient descent."""

    def __init__(self, learning_rate: float = 1e-2):
        self.learning_rate = learning_rate
        super().__init__(optax.sgd(learning_rate))


class SGDM(OptaxOptimizer):
    """SGD with heavy-ball momentum (optax.sgd with `momentum`).

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", 1964.
    """

    def __init__(self, learning_rate: float = 1e-2, momentum: float = 0.9):
        self.learning_rate, self.momentum = learning_rate, momentum
        super().__init__(optax.sgd(learning_rate, momentum=momentum))


class Adam(OptaxOptimizer):
    """Adam with learned_optimization's defaults (lr 1e-4, eps 1e-8, eps_root 1e-8).

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def __init__(
        self,
        learning_rate: float = 1e-4,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        epsilon_root: float = 1e-8,
    ):
        self.learning_rate, self.beta1, self.beta2 = learning_rate, beta1, beta2
        self.epsilon, self.epsilon_root = epsilon, epsilon_root
        super().__init__(
            optax.adam(learning_rate, b1=beta1, b2=beta2, eps=epsilon, eps_root=epsilon_root)
        )


def to_optax(opt: Optimizer) -> optax.GradientTransformationExtraArgs:
    """An optax transformation that runs `opt`; its updates are new params minus old.

    The optax state is the `Optimizer`'s own state. When `update` is given `params`
    they replace the params held in the state first, so the transformation follows
    whatever the caller applied. `value` (the loss) and other extra args are forwarded.
    Note: `params + (new - params)` may differ from `new` by float rounding.
    """

    def init_fn(params):
        return opt.init(params)

    def update_fn(updates, state, params=None, value=None, **extra):
        if params is not None:
            state = opt.set_params(state, params)
        old = opt.get_params(state)
        new_state = opt.update(state, updates, loss=value, **extra)
        new = opt.get_params(new_state)
        return jax.tree_util.tree_map(lambda n, o: n - o, new, old), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
