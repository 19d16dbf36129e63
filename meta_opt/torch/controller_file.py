"""controller.npz files of the PyTorch MetaOpt (the format: `meta_opt.controller_file`).

A file written by either the PyTorch or the JAX side initialises the other
(`initial_gpc_params=path`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from meta_opt.controller_file import load_controller, write_controller

__all__ = ["load_controller", "save_controller"]


def save_controller(
    path: str | os.PathLike, controller: Any, num_params: int | None = None
) -> str:
    """Writes the controller M of a `MetaOpt` (or M itself) to controller.npz.

    Args:
      path: a directory (the file is `path/controller.npz`) or a `.npz` file name.
      controller: a `meta_opt.torch.MetaOpt`, or M as a tensor / array of shape (H,),
        (H, n) or (H, n, n).
      num_params: the model's parameter count; needed only for a bare scalar M (a MetaOpt
        and diagonal / full controllers know theirs).

    Returns:
      The file written.
    """
    M = getattr(controller, "controller", controller)
    M = M.detach().cpu().numpy() if isinstance(M, torch.Tensor) else np.asarray(M)
    if not 1 <= M.ndim <= 3:
        raise ValueError(f"save_controller: M must have 1 to 3 dimensions, got shape {M.shape}")
    n = getattr(controller, "num_params", num_params) if M.ndim == 1 else M.shape[1]
    if n is None:
        raise ValueError("save_controller: a scalar controller does not show the model size; "
                         "pass num_params=<the model's parameter count>")
    return write_controller(path, M, n)
