"""The controller's cost C(M) and its gradient: replay the last HH steps with the current M.

    y_0 = x_{t-HH};  for k = 0..HH-1, s = t-HH+k:
        y_{k+1} = decay y_k - eta_s v_s + u_k,   u_k = sum_i M_i * w_{s-i}
    C(M) = f_t(y_HH)

with v_s = w_s (fake rollouts) or v_s = T_s(grad f_s(y_k)) recomputed (real rollouts).
The control terms u_k use the recorded disturbances, so C depends on M only through them
and grad_{M_i} C = sum_k lambda_k * w_{s_k - i} with lambda_k = dC/du_k = dC/dy_{k+1}.
Fake rollouts are affine in M and get lambda_k = decay^(HH-1-k) grad f_t(y_HH) in closed
form; real rollouts get the lambda_k from one reverse pass through the unrolled steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from meta_opt.torch.controller import control
from meta_opt.torch.disturbance import AdamMoments, DisturbanceTransform
from meta_opt.torch.flat import FlatLayout

CostFunction = Callable[[Any], torch.Tensor]


def value_and_grad(
    cost_fn: CostFunction, layout: FlatLayout, y: torch.Tensor, create_graph: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """cost_fn at the flat point y and its gradient (differentiable when `create_graph`)."""
    with torch.enable_grad():
        leaf = y if create_graph else y.detach().requires_grad_()
        loss = cost_fn(layout.unflatten(leaf))
        (grad,) = torch.autograd.grad(loss, leaf, create_graph=create_graph, allow_unused=True)
    if grad is None:  # the cost does not depend on the parameters
        grad = torch.zeros_like(y)
    return (loss if create_graph else loss.detach()), grad


class Rollouts:
    """C(M), grad_M C(M) and y_HH at step t, for a K-row disturbance ring.

    Coefficient and index tensors depend on t only through t % K; they are built once per
    residue and kept on the device (no host-to-device copy per step).
    """

    def __init__(
        self,
        H: int,
        HH: int,
        K: int,
        decay: float,
        lr_at: Callable[[int], float],
        layout: FlatLayout,
        dtype: torch.dtype,
    ) -> None:
        self.H, self.HH, self.K, self.decay = H, HH, K, decay
        self.lr_at = lr_at
        self.layout = layout
        self.dtype = dtype
        self._cache: dict[tuple[str, int], torch.Tensor] = {}

    # ---- cached per-residue tensors ---------------------------------------------------
    def _steps(self, t: int) -> list[int]:
        return [t - self.HH + k for k in range(self.HH)]

    def _cached(self, name: str, t: int, build: Callable[[], Any]) -> torch.Tensor:
        key = (name, t % self.K)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(
                build(), dtype=self.dtype,
                device=self.layout.device,
            )
        return self._cache[key]

    def _affine_weights(self, t: int) -> torch.Tensor:
        """A (H, K): y_HH = decay^HH x_{t-HH} - (base steps) + sum_i M_i * (A_i @ W)."""

        def build():
            A = [[0.0] * self.K for _ in range(self.H)]
            for k, s in enumerate(self._steps(t)):
                for i in range(self.H):
                    A[i][(s - i) % self.K] += self.decay ** (self.HH - 1 - k)
            return A

        return self._cached("affine", t, build)

    def _base_weights(self, t: int) -> torch.Tensor:
        """b (K,): the base steps' weights c_k eta_{s_k} at the rows of w_{s_k}. The learning
        rates change with t, so it is built each step (pinned and copied without waiting
        for the device on GPUs)."""
        b = [0.0] * self.K
        for k, s in enumerate(self._steps(t)):
            b[s % self.K] += self.decay ** (self.HH - 1 - k) * self.lr_at(s)
        device = self.layout.device
        host = torch.tensor(b, dtype=self.dtype, pin_memory=device.type == "cuda")
        return host.to(device, non_blocking=True)

    def _lag_selector(self, t: int) -> torch.Tensor:
        """(H, HH, K) one-hot: entry [i, k, r] = 1 where ring row r holds w_{s_k - i}."""

        def build():
            sel = [[[0.0] * self.K for _ in range(self.HH)] for _ in range(self.H)]
            for k, s in enumerate(self._steps(t)):
                for i in range(self.H):
                    sel[i][k][(s - i) % self.K] = 1.0
            return sel

        return self._cached("selector", t, build)

    # ---- the two rollouts -------------------------------------------------------------
    def fake(
        self, M: torch.Tensor, W: torch.Tensor, x0: torch.Tensor, t: int,
        cost_fn: CostFunction,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Replays the recorded disturbances: C(M), grad_M C and y_HH in closed form.

        y_HH = decay^HH x0 - sum_k c_k eta_{s_k} w_{s_k} + sum_i M_i * Z_i with
        c_k = decay^(HH-1-k) and Z = A @ W, so grad_{M_i} C = Z_i * grad f_t(y_HH), which
        for scalar lags is A @ (W @ grad f_t(y_HH)): a couple of passes over W instead of
        H * HH row operations."""
        A = self._affine_weights(t)
        b = self._base_weights(t)
        start = x0 * self.decay**self.HH if self.decay != 1.0 else x0
        if M.ndim == 1:
            coef = torch.addmv(b, A.t(), M, beta=-1.0)  # M @ A - b
            y = torch.addmv(start, W.t(), coef)
            cost, gy = value_and_grad(cost_fn, self.layout, y)
            return cost, A @ (W @ gy), y
        Zb = torch.cat([A, b[None]]) @ W  # Z and b @ W in one pass over W
        Z = Zb[: self.H]
        y = start - Zb[self.H]
        for i in range(self.H):  # fused multiply-adds, no (H, n) temporary
            if M.ndim == 2:
                y.addcmul_(M[i], Z[i])
            else:
                y.addmv_(M[i], Z[i])
        cost, gy = value_and_grad(cost_fn, self.layout, y)
        gM = Z * gy if M.ndim == 2 else gy[None, :, None] * Z[:, None, :]
        return cost, gM, y

    def real(
        self,
        M: torch.Tensor,
        W: torch.Tensor,
        x0: torch.Tensor,
        t: int,
        cost_fn: CostFunction,
        cost_of_step: Callable[[int], CostFunction],
        transform: DisturbanceTransform,
        transform_state: AdamMoments | None,
        recorded_first: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Recomputes each disturbance along the counterfactual path: C(M), grad_M C, y_HH.

        Args:
          cost_of_step: s -> the cost used to recompute v_s (f_s, or f_t when frozen).
          transform_state: T's state at the first recomputed step (at t-HH+1 when
            `recorded_first`, at t-HH otherwise); advanced by the recomputed gradients.
          recorded_first: step k = 0 plays the recorded w_{t-HH} (exact: y_0 = x_{t-HH}
            is where g_{t-HH} was taken with the cost f_{t-HH}); False recomputes it too.
        """
        steps = self._steps(t)
        if M.ndim == 1:
            # All HH control terms in one pass over W: row k weighs ring row r by M_i
            # wherever r holds w_{s_k - i}.
            U = torch.einsum("i,ikr->kr", M, self._lag_selector(t)) @ W
        else:
            U = torch.stack([control(M, W, s) for s in steps])
        # Separate leaves (not U[k] of one leaf, whose backward fills a zero (HH, n) per k):
        # dC/du_k are the adjoints lambda_k.
        controls = [u.requires_grad_() for u in U.unbind()]
        try:
            cost, lambdas, y = self._unroll(W, x0, steps, controls, cost_fn, cost_of_step,
                                            transform, transform_state, recorded_first)
        except RuntimeError as err:
            if "double backward" not in str(err) and "create_graph" not in str(err):
                raise
            raise RuntimeError(
                "real rollouts differentiate through gradient evaluations (double backward), "
                f"which this cost function does not support ({err}); torch.compile'd models "
                "cannot: pass the uncompiled module to make_cost_fn, or use "
                "fake_the_dynamics=True"
            ) from err
        return cost, self.controller_gradient(M, W, lambdas, t), y

    def _unroll(self, W, x0, steps, controls, cost_fn, cost_of_step, transform,
                transform_state, recorded_first):
        """C = f_t(y_HH) along the recomputed path, and dC/du_k for the controls u_k."""
        with torch.enable_grad():
            y, ts = x0, transform_state
            for k, s in enumerate(steps):
                if k == 0 and recorded_first:
                    v = W[s % self.K]
                else:
                    _, g = value_and_grad(cost_of_step(s), self.layout, y,
                                          create_graph=y.requires_grad)
                    v, ts = transform.apply(g, ts)
                decayed = self.decay * y if self.decay != 1.0 else y
                y = decayed - self.lr_at(s) * v + controls[k]
            cost = cost_fn(self.layout.unflatten(y))
            lambdas = torch.stack(torch.autograd.grad(cost, controls))
        return cost.detach(), lambdas, y.detach()

    def controller_gradient(
        self, M: torch.Tensor, W: torch.Tensor, lambdas: torch.Tensor, t: int
    ) -> torch.Tensor:
        """grad_{M_i} C = sum_k lambda_k * w_{s_k - i} from the (HH, n) adjoints lambda_k."""
        if M.ndim == 1:
            # lambda_k . w_r for every ring row r in one pass over W, then pick the rows.
            return torch.einsum("kr,ikr->i", lambdas @ W.t(), self._lag_selector(t))
        gM = torch.zeros_like(M)
        for k, s in enumerate(self._steps(t)):
            for i in range(self.H):
                w = W[(s - i) % self.K]
                if M.ndim == 2:
                    gM[i].addcmul_(lambdas[k], w)
                else:
                    gM[i].addr_(lambdas[k], w)
        return gM
