"""The cost function MetaOpt's `step(cost_fn)` takes: the loss as a function of the params.

MetaOpt evaluates the training loss away from the current parameters (its counterfactual
rollouts) and real rollouts replay the losses of past steps, so the loss travels as a
callable `cost_fn(params) -> scalar`, where `params` is the list or dict of tensors the
optimizer was built from. `make_cost_fn` builds one from a module, a loss and a batch with
`torch.func.functional_call`, which runs the module with substituted parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call


class CostFn:
    """`f(params) = loss_fn(module(*inputs) with params substituted, *targets, **kwargs)`.

    `params` is a dict name -> tensor (names as in `module.named_parameters()`) or a list in
    `module.parameters()` order. Buffers (batch-norm statistics, ...) come from the module.
    Picklable when `module` and `loss_fn` are (a module-level function, not a lambda), so
    an optimizer state holding these (real rollouts replay them) can be saved.
    """

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: Callable[..., torch.Tensor],
        inputs: tuple[Any, ...],
        targets: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.module = module
        self.loss_fn = loss_fn
        self.inputs = inputs
        self.targets = targets
        self.kwargs = kwargs
        self.names = [name for name, _ in module.named_parameters()]

    def __call__(self, params: Any) -> torch.Tensor:
        if not isinstance(params, dict):
            params = list(params)
            if len(params) != len(self.names):
                raise ValueError(
                    f"cost_fn got {len(params)} parameter tensors but the module has "
                    f"{len(self.names)} ({', '.join(self.names)}); build the optimizer from "
                    "model.parameters() or dict(model.named_parameters()) of this module"
                )
            params = dict(zip(self.names, params, strict=True))
        out = functional_call(self.module, params, self.inputs)
        return self.loss_fn(out, *self.targets, **self.kwargs)

    @property
    def nbytes(self) -> int:
        """Bytes of the tensors this cost holds (the batch), for MetaOpt's memory metrics."""
        leaves = [*self.inputs, *self.targets, *self.kwargs.values()]
        return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def make_cost_fn(
    module: torch.nn.Module,
    loss_fn: Callable[..., torch.Tensor],
    inputs: Any,
    *targets: Any,
    **loss_kwargs: Any,
) -> CostFn:
    """The loss of `module` on one batch as a function of its parameters.

    Args:
      module: the model; its parameters are substituted, its buffers are used as they are.
      loss_fn: `loss_fn(outputs, *targets, **loss_kwargs) -> scalar`, e.g.
        `torch.nn.functional.cross_entropy`.
      inputs: the module's input, or a tuple of its positional inputs.
      *targets: the rest of `loss_fn`'s positional arguments (labels, ...).
      **loss_kwargs: `loss_fn`'s keyword arguments (e.g. `label_smoothing=0.1`).

    Returns:
      A `CostFn`: `cost_fn(params) -> loss`, for `MetaOpt.step(cost_fn)`.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"make_cost_fn needs a torch.nn.Module, got {type(module).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"make_cost_fn needs a callable loss_fn(outputs, ...), got {loss_fn!r}")
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    return CostFn(module, loss_fn, inputs, tuple(targets), dict(loss_kwargs))
