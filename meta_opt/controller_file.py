"""The controller.npz format, shared by the JAX and the PyTorch MetaOpt (numpy only).

Arrays `M` (in its own dtype, so a float64 controller round-trips exactly), `m_method`,
`H` and `num_params`. A file written by either side initialises the other
(`initial_gpc_params=path`). Each side turns its own state into M
(`meta_opt.optimizers.save_controller`, `meta_opt.torch.save_controller`); this module
only writes and reads the file.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

M_METHODS = ("scalar", "diagonal", "full")
CONTROLLER_FILE = "controller.npz"


def controller_path(path: str | os.PathLike) -> str:
    """The file for `path`: itself if it names a .npz file, else `path/controller.npz`."""
    path = os.fspath(path)
    if os.path.isdir(path) or not path.endswith(".npz"):
        return os.path.join(path, CONTROLLER_FILE)
    return path


def write_controller(path: str | os.PathLike, M: np.ndarray, num_params: int) -> str:
    """Writes M ((H,), (H, n) or (H, n, n), unpadded) for a model of `num_params`
    parameters to `controller_path(path)`; returns the file."""
    file = controller_path(path)
    os.makedirs(os.path.dirname(file) or ".", exist_ok=True)
    with open(file, "wb") as fh:
        np.savez(fh, M=M, m_method=np.array(M_METHODS[M.ndim - 1]), H=np.array(M.shape[0]),
                 num_params=np.array(int(num_params)))
    return file


def load_controller(path: str | os.PathLike) -> dict[str, Any]:
    """Reads controller.npz (or a directory holding one): {M, m_method, H, num_params},
    with M a numpy array in the dtype it was saved in."""
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
