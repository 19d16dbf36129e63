"""One flat vector for all parameters, and views of a flat vector shaped as the parameters.

MetaOpt's histories are rows of length n (the parameter count), as on the JAX side
(`ravel_pytree`). Cost functions receive parameters in the container the optimizer was
built from: a list of tensors, or a dict name -> tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


class FlatLayout:
    """Sizes and shapes of a parameter list, and the container cost functions expect."""

    def __init__(self, params: Sequence[torch.Tensor], names: Sequence[str] | None) -> None:
        if not params:
            raise ValueError("MetaOpt got an empty parameter list; pass model.parameters()")
        dtypes = {p.dtype for p in params}
        devices = {p.device for p in params}
        if len(dtypes) > 1 or len(devices) > 1:
            raise ValueError(
                "MetaOpt keeps one flat history for all parameters, so they must share one "
                f"dtype and one device; got dtypes {sorted(map(str, dtypes))} and devices "
                f"{sorted(map(str, devices))}; cast the model (model.to(dtype, device)) first"
            )
        if not all(p.dtype.is_floating_point for p in params):
            raise ValueError(f"MetaOpt needs floating-point parameters, got {params[0].dtype}")
        self.shapes = [p.shape for p in params]
        self.sizes = [p.numel() for p in params]
        self.names = None if names is None else list(names)
        self.n = sum(self.sizes)
        self.dtype = params[0].dtype
        self.device = params[0].device

    def flatten(self, tensors: Sequence[torch.Tensor | None]) -> torch.Tensor:
        """One flat vector from tensors shaped like the parameters (None counts as zeros)."""
        parts = [
            torch.zeros(size, dtype=self.dtype, device=self.device) if t is None
            else t.reshape(-1)
            for t, size in zip(tensors, self.sizes, strict=True)
        ]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def views(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """Views of the flat `vec`, one per parameter, shaped like the parameters."""
        return [piece.view(shape) for piece, shape in
                zip(vec.split(self.sizes), self.shapes, strict=True)]

    def unflatten(self, vec: torch.Tensor) -> Any:
        """`vec` shaped as the parameters, in their dtype (MetaOpt computes in at least
        float32), in the container cost functions receive (list or dict)."""
        views = self.views(vec)
        if vec.dtype != self.dtype:  # differentiable casts, e.g. to bfloat16 params
            views = [v.to(self.dtype) for v in views]
        return views if self.names is None else dict(zip(self.names, views, strict=True))

    def container(self, tensors: Sequence[torch.Tensor]) -> Any:
        """`tensors` (in parameter order) in the container cost functions receive."""
        tensors = list(tensors)
        return tensors if self.names is None else dict(zip(self.names, tensors, strict=True))
