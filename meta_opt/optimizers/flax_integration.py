"""MetaOpt in flax training loops: a linen `TrainState` that forwards `cost_fn`, and the
cost function of an nnx model.

flax's `TrainState.apply_gradients` calls `tx.update(grads, opt_state, params)` with no
extra arguments, so an optimizer that needs the loss (MetaOpt's `cost_fn`) cannot get it;
`MetaOptTrainState.apply_gradients(grads=..., cost_fn=...)` passes it on. `nnx.Optimizer`
does forward keyword arguments to `tx.update`, but it hands the optimizer the model's
parameters as an `nnx.State`; `make_nnx_cost_fn(loss_fn, model, batch)` turns the usual
nnx loss `loss_fn(model, batch)` into the cost of such a state, so no second loss over
`nnx.State` has to be written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax
from flax import nnx, struct
from flax.linen.fp8_ops import OVERWRITE_WITH_GRADIENT
from flax.training import train_state

__all__ = ["MetaOptTrainState", "NnxCostFn", "make_nnx_cost_fn"]


class MetaOptTrainState(train_state.TrainState):
    """A flax `TrainState` whose `apply_gradients` forwards `cost_fn` to the optimizer.

    Works with any optax transformation (those that take no extra arguments ignore it):

        state = MetaOptTrainState.create(apply_fn=model.apply, params=params, tx=tx)
        state = state.apply_gradients(grads=grads, cost_fn=make_cost_fn(loss_fn, batch))
    """

    def apply_gradients(self, *, grads: Any, cost_fn: Any = None,
                        **kwargs: Any) -> MetaOptTrainState:
        """Like `TrainState.apply_gradients`, passing `cost_fn` to `tx.update`.

        Args:
          grads: gradients with the structure of `.params`.
          cost_fn: the loss as a pytree callable of the params (`make_cost_fn`), for
            optimizers that evaluate it (MetaOpt); None passes nothing.
          **kwargs: other dataclass attributes to `.replace()`.

        Returns:
          The state with `step` + 1 and updated `params` and `opt_state`.
        """
        owg = OVERWRITE_WITH_GRADIENT in grads
        grads_with_opt = grads["params"] if owg else grads
        params_with_opt = self.params["params"] if owg else self.params
        extra = {} if cost_fn is None else {"cost_fn": cost_fn}
        updates, opt_state = optax.with_extra_args_support(self.tx).update(
            grads_with_opt, self.opt_state, params_with_opt, **extra)
        new_params = optax.apply_updates(params_with_opt, updates)
        if owg:
            new_params = {"params": new_params,
                          OVERWRITE_WITH_GRADIENT: grads[OVERWRITE_WITH_GRADIENT]}
        return self.replace(step=self.step + 1, params=new_params, opt_state=opt_state,
                            **kwargs)


class NnxCostFn(struct.PyTreeNode):
    """`f(params) = loss_fn(nnx.merge(graphdef, params, rest), *args, **kwargs)`.

    `params` is the `nnx.State` of the variables the optimizer updates (what
    `nnx.Optimizer` hands to `tx.update`); `rest` holds the model's other variables
    (batch statistics, rng counts, ...) as they were when the cost was made. The loss runs
    on a merged copy of the model, so its side effects on variables are discarded.
    """

    loss_fn: Callable[..., jax.Array] = struct.field(pytree_node=False)
    graphdef: Any = struct.field(pytree_node=False)
    rest: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = struct.field(default_factory=dict)

    def __call__(self, params: Any) -> jax.Array:
        model = nnx.merge(self.graphdef, params, self.rest)
        return self.loss_fn(model, *self.args, **self.kwargs)


def make_nnx_cost_fn(loss_fn: Callable[..., jax.Array], model: nnx.Module, *args: Any,
                     wrt: Any = nnx.Param, **kwargs: Any) -> NnxCostFn:
    """The cost function of `model`'s `wrt` variables for `nnx.Optimizer(model, tx, wrt=wrt)`.

    Example, with the one loss the training step already differentiates:

        def loss_fn(model, batch):
            return jnp.mean((model(batch["x"]) - batch["y"]) ** 2)

        grads = nnx.grad(loss_fn)(model, batch)
        optimizer.update(model, grads, cost_fn=make_nnx_cost_fn(loss_fn, model, batch))

    Args:
      loss_fn: `loss_fn(model, *args, **kwargs) -> scalar`.
      model: the nnx model (its current variables fix `rest`).
      *args: the rest of `loss_fn`'s positional arguments (batch, ...).
      wrt: the filter of the optimizer's variables (as given to `nnx.Optimizer`).
      **kwargs: `loss_fn`'s keyword arguments.

    Returns:
      An `NnxCostFn`, a pytree callable of the `wrt` state.
    """
    if not callable(loss_fn):
        raise TypeError(f"make_nnx_cost_fn needs a callable loss_fn(model, ...), got {loss_fn!r}")
    graphdef, _, rest = nnx.split(model, wrt, ...)
    return NnxCostFn(loss_fn=loss_fn, graphdef=graphdef, rest=nnx.as_pure(rest),
                     args=tuple(args), kwargs=dict(kwargs))
