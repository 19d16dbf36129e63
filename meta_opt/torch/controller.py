"""Controller algebra: the lags M_0..M_{H-1}, their control term, projection and summaries.

A controller is one tensor: (H,) for scalar lags, (H, n) for diagonal ones, (H, n, n) for
full matrices. The disturbance history is a ring buffer W of K rows in which row s % K
holds w_s (rows of steps before 0 stay zero).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from meta_opt.controller_file import M_METHODS  # one list for the JAX and torch sides


def lag_rows(s: int, H: int, K: int) -> list[int]:
    """Ring rows of w_s, w_{s-1}, ..., w_{s-H+1} in a K-row ring."""
    return [(s - i) % K for i in range(H)]


def ring_runs(start: int, count: int, K: int) -> list[tuple[int, int, int]]:
    """The rows (start + j) % K, j < count, of a K-row ring as at most two contiguous runs
    `(first_row, end_row, j_of_first_row)`, so they are read as slices, not gathered."""
    start %= K
    first = min(count, K - start)
    runs = [(start, start + first, 0)]
    if first < count:
        runs.append((0, count - first, first))
    return runs


def control(M: torch.Tensor, W: torch.Tensor, s: int) -> torch.Tensor:
    """sum_{i<H} M_i * w_{s-i}, read from ring W (in M's dtype); reads only the H rows."""
    H, K = M.shape[0], W.shape[0]
    if M.ndim == 2:  # one fused multiply-add per lag, no (H, n) temporary
        rows = lag_rows(s, H, K)
        out = M[0] * W[rows[0]]
        for i in range(1, H):
            out = out.addcmul_(M[i], W[rows[i]])
        return out
    # Oldest lag first: ring row (s - H + 1 + j) % K holds w_{s-(H-1-j)}, weighted M_{H-1-j}.
    weights = M.flip(0)
    out = None
    for lo, hi, j in ring_runs(s - H + 1, H, K):
        w_j, rows = weights[j:j + hi - lo], W[lo:hi]
        if M.ndim == 1:
            out = w_j @ rows if out is None else out.addmv_(rows.t(), w_j)
        else:
            term = torch.einsum("jab,jb->a", w_j, rows)
            out = term if out is None else out.add_(term)
    return out


def project_(M: torch.Tensor, radius: float | None) -> torch.Tensor:
    """Projects each lag in place onto {||M_i|| <= radius}: |M_i| (scalar), max |entry|
    (diagonal: the operator norm of a diagonal matrix), Frobenius norm (full)."""
    if radius is None:
        return M
    if M.ndim <= 2:
        return M.clamp_(-radius, radius)
    norms = torch.linalg.matrix_norm(M, keepdim=True)
    return M.mul_(torch.clamp(radius / torch.clamp(norms, min=1e-30), max=1.0))


def summary(M: torch.Tensor) -> torch.Tensor:
    """(H,) per-lag scalar: M itself, the mean of a diagonal lag, the mean of a full
    lag's diagonal (the numbers logged as M_i and grad_M_i)."""
    if M.ndim == 1:
        return M
    if M.ndim == 2:
        return M.sum(dim=1) / M.shape[1]
    return torch.diagonal(M, dim1=1, dim2=2).sum(dim=1) / M.shape[1]


def controller_shape(m_method: str, H: int, n: int) -> tuple[int, ...]:
    """Shape of M for `m_method` with H lags over n parameters."""
    return {"scalar": (H,), "diagonal": (H, n), "full": (H, n, n)}[m_method]


def initial_controller(
    m_method: str,
    H: int,
    n: int,
    initial_m0: float,
    initial_gpc_params: Any,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """M at step 0: from `initial_gpc_params` (array, `load_controller` dict or a path to
    a controller.npz / its directory), else M_0 = initial_m0 (times I), other lags 0."""
    want = controller_shape(m_method, H, n)
    if initial_gpc_params is None:
        M = torch.zeros(want, dtype=dtype, device=device)
        if m_method == "scalar":
            M[0] = initial_m0
        elif m_method == "diagonal":
            M[0].fill_(initial_m0)
        else:
            M[0].diagonal().fill_(initial_m0)
        return M
    ctrl = initial_gpc_params
    if isinstance(ctrl, (str, bytes)) or hasattr(ctrl, "__fspath__"):
        from meta_opt.torch.controller_file import load_controller

        ctrl = load_controller(os.fsdecode(ctrl))
    if isinstance(ctrl, dict):
        got_method, got = ctrl.get("m_method"), ctrl["M"]
    else:
        got = ctrl
        ndim = len(np.shape(got))
        got_method = M_METHODS[ndim - 1] if 1 <= ndim <= 3 else None
    got = got.detach() if isinstance(got, torch.Tensor) else torch.from_numpy(np.asarray(got))
    if got_method != m_method or tuple(got.shape) != want:
        raise ValueError(
            f"initial_gpc_params does not fit this run: it holds a {got_method!r} controller "
            f"of shape {tuple(got.shape)}, but m_method={m_method!r} with H={H} on {n} "
            f"parameters needs shape {want}; use the same H, m_method and model as the run "
            "that saved it"
        )
    return got.to(dtype=dtype, device=device).clone()
