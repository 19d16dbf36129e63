"""MetaOpt's histories and bookkeeping (everything but the controller and its optimizer).

Ring buffers hold step s in row s % rows, as on the JAX side (`MetaOptState`); rows of
steps before 0 are zeros. Step counts, learning rates and counters are host numbers, so
reading them never waits for the device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch

from meta_opt.torch.disturbance import AdamMoments


@dataclasses.dataclass
class MetaOptHistory:
    """The state of `MetaOpt` besides M and the controller optimizer.

    Attributes:
      step: t, the number of steps played (skipped non-finite steps excluded).
      disturbances: (H + HH, n) ring of w_s = T(g_s) in the history dtype (H rows when the
        controller is frozen).
      param_history: (HH, n) ring of past flat params x_s, or None when frozen.
      grad_history: (HH, n) ring of raw gradients g_s, kept only for real rollouts through
        Adam scaling, to advance `lagged_transform_state`; otherwise None.
      cost_fn_history: the cost functions of the last HH steps in a ring of HH slots (real
        rollouts that replay past costs), otherwise None.
      learning_rates: ring of the base learning rates eta_s of the last HH steps.
      transform_state: T's state at step t (Adam moments) or None.
      lagged_transform_state: T's state at step t - HH (real rollouts through Adam), or None.
      learning_rate: eta of the last played step (folded into the logged M_0).
      grad_M: (H,) summary of the last meta-gradient.
      gpc_cost: C(M) of the last controller update (0 before the first one).
      gpc_cost_valid: 1.0 once a controller update has happened, else 0.0.
      nonfinite_grad_steps: steps skipped for a non-finite gradient (kept across episodes).
      nonfinite_meta_steps: controller updates skipped for a non-finite C(M) or grad_M.
    """

    step: int
    disturbances: torch.Tensor
    param_history: torch.Tensor | None
    grad_history: torch.Tensor | None
    cost_fn_history: list[Callable[[Any], torch.Tensor] | None] | None
    learning_rates: list[float]
    transform_state: AdamMoments | None
    lagged_transform_state: AdamMoments | None
    learning_rate: float
    grad_M: torch.Tensor
    gpc_cost: torch.Tensor
    gpc_cost_valid: float
    nonfinite_grad_steps: int = 0
    nonfinite_meta_steps: int = 0

    def reset_(self) -> None:
        """Empties the histories for a new episode; the counters survive."""
        self.step = 0
        for buf in (self.disturbances, self.param_history, self.grad_history):
            if buf is not None:
                buf.zero_()
        if self.cost_fn_history is not None:
            self.cost_fn_history = [None] * len(self.cost_fn_history)
        self.learning_rates = [0.0] * len(self.learning_rates)
        self.transform_state = _zeros(self.transform_state)
        self.lagged_transform_state = _zeros(self.lagged_transform_state)
        self.learning_rate = 0.0
        self.grad_M.zero_()
        self.gpc_cost.zero_()
        self.gpc_cost_valid = 0.0

    def memory_bytes(self, controller_bytes: int) -> dict[str, int]:
        """Bytes held by each history; `controller_bytes` (M and its optimizer) adds to the
        total."""
        cost = sum(getattr(f, "nbytes", 0) for f in self.cost_fn_history or () if f is not None)
        disturbance = _nbytes(self.disturbances) + _nbytes(self.grad_history)
        params = _nbytes(self.param_history)
        transform = _nbytes(self.transform_state) + _nbytes(self.lagged_transform_state)
        total = (disturbance + params + cost + transform + _nbytes(self.grad_M)
                 + _nbytes(self.gpc_cost) + controller_bytes)
        return {
            "disturbance_history_bytes": disturbance,
            "param_history_bytes": params,
            "cost_fn_history_bytes": cost,
            "disturbance_transform_state_bytes": transform,
            "total_bytes": total,
        }

    def to_dict(self) -> dict[str, Any]:
        """The fields as a dict of tensors, numbers, lists and plain tuples (for
        `state_dict`; Adam moments become `(count, mu, nu)`, which `torch.load` with
        `weights_only=True` accepts)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for name, value in out.items():
            if isinstance(value, AdamMoments):
                out[name] = tuple(value)
        return out

    def load_dict_(self, saved: dict[str, Any]) -> None:
        """Copies a `to_dict()` of a history with the same shapes into this one."""
        names = [f.name for f in dataclasses.fields(self)]
        if sorted(saved) != sorted(names):
            raise ValueError(
                f"MetaOpt.load_state_dict: the saved state has fields {sorted(saved)} but "
                f"this optimizer keeps {sorted(names)}; load a state saved by a MetaOpt "
                "with the same options"
            )
        for name in names:
            mine, theirs = getattr(self, name), saved[name]
            if _layout(mine) != _layout(theirs):
                raise ValueError(
                    f"MetaOpt.load_state_dict: {name} is {_layout(theirs)} in the saved "
                    f"state but {_layout(mine)} here; load a state saved by a MetaOpt with "
                    "the same options (H, HH, m_method, rollout mode, Adam scaling) on the "
                    "same model"
                )
            if isinstance(mine, torch.Tensor):
                mine.copy_(theirs)
            elif isinstance(mine, AdamMoments):
                setattr(self, name, AdamMoments(int(theirs[0]), theirs[1].to(mine.mu, copy=True),
                                                theirs[2].to(mine.nu, copy=True)))
            elif isinstance(mine, list):
                setattr(self, name, list(theirs))
            else:
                setattr(self, name, theirs)


def _layout(x: Any) -> str:
    """What a state field holds, for comparing a saved state with this one."""
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    if isinstance(x, tuple) and len(x) == 3 and isinstance(x[1], torch.Tensor):
        return f"Adam moments of shape {tuple(x[1].shape)}"  # AdamMoments or its tuple
    if isinstance(x, list):
        return f"a list of {len(x)}"
    return "nothing" if x is None else "a number"


def _zeros(state: AdamMoments | None) -> AdamMoments | None:
    if state is None:
        return None
    return AdamMoments(0, torch.zeros_like(state.mu), torch.zeros_like(state.nu))


def _nbytes(x: Any) -> int:
    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    if isinstance(x, (tuple, list)):
        return sum(_nbytes(v) for v in x)
    return 0
