"""controller.npz files: a learned controller, shared by the PyTorch and JAX MetaOpt.

The format is the JAX side's (`meta_opt.optimizers.save_controller`): arrays `M` (in its
own dtype, so float64 controllers round-trip exactly), `m_method`, `H` and `num_params`.
A file written by either side initialises the other (`initial_gpc_params=path`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from meta_opt.torch.controller import M_METHODS

CONTROLLER_FILE = "controller.npz"


def controller_path(path: str | os.PathLike) -> str:
    """The file for `path`: itself if it names a .npz file, else `path/controller.npz`."""
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".npz"):
        return os.path.join(path, CONTROLLER_FILE)
    return path


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
    file = controller_path(path)
    os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
    with open(file, "wb") as fh:
        np.savez(fh, M=M, m_method=np.array(M_METHODS[M.ndim - 1]), H=np.array(M.shape[0]),
                 num_params=np.array(int(n)))
    return file


def load_controller(path: str | os.PathLike) -> dict[str, Any]:
    """Reads controller.npz (or a directory holding one): {M, m_method, H, num_params}, with
    M a numpy array in the dtype it was saved in."""
    file = controller_path(path)
    if not os.path.exists(file):
        raise FileNotFoundError(
            f"no controller file at {file!r}; pass a controller.npz written by save_controller "
            "or the directory that holds it"
        )
    with np.load(file) as z:
        out = {
            "M": np.asarray(z["M"]),
            "m_method": str(z["m_method"]),
            "H": int(z["H"]),
            "num_params": int(z["num_params"]),
        }
    if out["m_method"] not in M_METHODS or out["M"].ndim != M_METHODS.index(out["m_method"]) + 1:
        raise ValueError(f"corrupt controller file {file!r}: m_method={out['m_method']!r}, "
                         f"M shape {out['M'].shape}")
    return out
