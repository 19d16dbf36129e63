"""The pytree loss callables that MetaOpt's `update(..., cost_fn=f)` takes.

MetaOpt evaluates the training loss at points other than the current params (its
counterfactual rollouts), and real rollouts replay the losses of past steps, so the
loss must travel as data: a `flax.struct.PyTreeNode` whose leaves are the batch, rng and
model state, and whose static field is the pure loss function. Such an object passes
through `jit`, `vmap` and `lax.scan`, and its leaves can be stacked into a history.

- `make_cost_fn(loss_fn, batch, ...)`: f(params) = loss_fn(params, batch, ...).
- `make_masked_cost_fn(loss_fn, params, batch, ...)`: for MetaOpt on a subset of the
  parameters (`optax.multi_transform`, `optax.masked`): f(subset) fills the parameters
  MetaOpt does not own (the `optax.MaskedNode` leaves) from `params`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax
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
    _check_loss_fn(loss_fn, "make_cost_fn")
    return CostFn(loss_fn=loss_fn, args=tuple(args), kwargs=dict(kwargs))


def _is_masked(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


class MaskedCostFn(struct.PyTreeNode):
    """`f(subset) = loss_fn(merge(subset, params), *args, **kwargs)`.

    Inside `optax.multi_transform` / `optax.masked`, MetaOpt sees the full parameter tree
    with `optax.MaskedNode` in place of the parameters it does not own. This cost fills
    those from `params`, the full parameters of the step the cost was made at: the other
    parameters are held at their values of that step. Real rollouts that replay past
    costs therefore evaluate f_s with the other parameters at their step-s values, which
    keeps the replay exact; those values are part of the recorded cost history.
    """

    loss_fn: Callable[..., jax.Array] = struct.field(pytree_node=False)
    params: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = struct.field(default_factory=dict)

    def __call__(self, subset: Any) -> jax.Array:
        full = jax.tree.map(lambda s, p: p if _is_masked(s) else s, subset, self.params,
                            is_leaf=_is_masked)
        return self.loss_fn(full, *self.args, **self.kwargs)


def make_masked_cost_fn(
    loss_fn: Callable[..., jax.Array], params: Any, *args: Any, **kwargs: Any
) -> MaskedCostFn:
    """A `MaskedCostFn`: the loss of a subset of `params`, the rest held at `params`.

    Example, MetaOpt on the "encoder" parameters and AdamW on the rest:

        tx = optax.multi_transform({"metaopt": metaopt(...), "adamw": optax.adamw(1e-3)},
                                   labels)
        cost_fn = make_masked_cost_fn(loss_fn, params, batch)
        updates, opt_state = tx.update(grads, opt_state, params, cost_fn=cost_fn)
    """
    _check_loss_fn(loss_fn, "make_masked_cost_fn")
    return MaskedCostFn(loss_fn=loss_fn, params=params, args=tuple(args), kwargs=dict(kwargs))


def _check_loss_fn(loss_fn: Any, caller: str) -> None:
    if not callable(loss_fn):
        raise TypeError(f"{caller} needs a callable loss_fn(params, ...), got {loss_fn!r}")


def is_array_leaf(leaf: Any) -> bool:
    """Whether a pytree leaf is data (an array or a number) rather than, e.g., a function."""
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic, int, float, complex, bool))


def contains_masked_node(tree: Any) -> bool:
    """Whether `tree` has `optax.MaskedNode` leaves (it is the view of `optax.masked`)."""
    return any(_is_masked(x) for x in jax.tree.leaves(tree, is_leaf=_is_masked))
