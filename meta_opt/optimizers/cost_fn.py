"""The pytree loss callable that MetaOpt's `update(..., cost_fn=f)` takes.

MetaOpt evaluates the training loss at points other than the current params (its
counterfactual rollouts), and real rollouts replay the losses of past steps, so the
loss must travel as data: a `flax.struct.PyTreeNode` whose leaves are the batch, rng and
model state, and whose static field is the pure loss function. Such an object passes
through `jit`, `vmap` and `lax.scan`, and its leaves can be stacked into a history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import struct


class CostFn(struct.PyTreeNode):
    """`f(params) = loss_fn(params, *args, **kwargs)`, a pytree over `args`/`kwargs`.

    `loss_fn` is static (part of the tree structure, compared by identity/equality);
    `args` and `kwargs` are pytrees of arrays (batch, rng key, model state, ...).
    `loss_fn` must return a scalar loss; wrap functions that return `(loss, aux)`.
    """

    loss_fn: Callable[..., jax.Array] = struct.field(pytree_node=False)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = struct.field(default_factory=dict)

    def __call__(self, params: Any) -> jax.Array:
        return self.loss_fn(params, *self.args, **self.kwargs)


def make_cost_fn(loss_fn: Callable[..., jax.Array], *args: Any, **kwargs: Any) -> CostFn:
    """Binds the extra arguments of `loss_fn(params, *args, **kwargs)` into a `CostFn`.

    Example: `cost_fn = make_cost_fn(loss_fn, batch, dropout_rng)` inside the train step,
    then `tx.update(grads, opt_state, params, cost_fn=cost_fn)`. Create it with the same
    `loss_fn` object every step (a module-level function, not a fresh lambda) so its
    tree structure stays fixed.
    """
    if not callable(loss_fn):
        raise TypeError(f"make_cost_fn needs a callable loss_fn(params, ...), got {loss_fn!r}")
    return CostFn(loss_fn=loss_fn, args=tuple(args), kwargs=dict(kwargs))
