"""The disturbance transform T: w = T(g), optional global-norm clip then Adam scaling.

The same transformation as `optax.chain(optax.clip_by_global_norm(c),
optax.scale_by_adam(b1, b2, eps, eps_root))` on the flat gradient, written as pure
out-of-place torch operations so that real rollouts can differentiate through it (torch
has no optax; `torch.optim.Adam` updates parameters in place and cannot be
differentiated). The step count is a Python int, so bias corrections are host floats.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class AdamMoments(NamedTuple):
    """Adam scaling's state: steps seen and the first / second moment estimates."""

    count: int
    mu: torch.Tensor
    nu: torch.Tensor


class DisturbanceTransform:
    """T: clip g to global norm `grad_clip` (if set), then Adam-scale it (if `adam_betas`).

    `apply(g, state) -> (w, new_state)` never mutates its inputs; the state is None
    without Adam scaling (clipping is stateless).
    """

    def __init__(
        self,
        grad_clip: float | None,
        adam_betas: tuple[float, float] | None,
        adam_eps: float = 1e-8,
        adam_eps_root: float = 1e-16,
    ) -> None:
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.adam_betas = None if adam_betas is None else tuple(float(b) for b in adam_betas)
        self.adam_eps = float(adam_eps)
        self.adam_eps_root = float(adam_eps_root)

    @property
    def stateful(self) -> bool:
        """True when T carries state (Adam scaling)."""
        return self.adam_betas is not None

    def init(self, like: torch.Tensor) -> AdamMoments | None:
        """Fresh state for flat gradients shaped, typed and placed like `like`."""
        if not self.stateful:
            return None
        return AdamMoments(0, torch.zeros_like(like), torch.zeros_like(like))

    def apply(
        self, g: torch.Tensor, state: AdamMoments | None
    ) -> tuple[torch.Tensor, AdamMoments | None]:
        """w = T(g) and T's next state, in the same order of operations as optax."""
        if self.grad_clip is not None:
            norm = torch.linalg.vector_norm(g)
            g = torch.where(norm < self.grad_clip, g, g / norm * self.grad_clip)
        if state is None:
            return g, None
        b1, b2 = self.adam_betas
        mu = (1 - b1) * g + b1 * state.mu
        nu = (1 - b2) * (g * g) + b2 * state.nu
        count = state.count + 1
        mu_hat = mu / (1 - b1**count)
        nu_hat = nu / (1 - b2**count)
        w = mu_hat / (torch.sqrt(nu_hat + self.adam_eps_root) + self.adam_eps)
        return w, AdamMoments(count, mu, nu)
