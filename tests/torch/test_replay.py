"""With M held fixed, the rollout replays history exactly (y_HH = x_t), fake and real.

So C(M) = f_t(x_t) at every controller update, and `counterfactual=False` (which adds
y_HH - x_t to the update) plays the frozen controller's trajectory.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from metaopt_twins import Problem, torch_metaopt

H, HH = 2, 3
STEPS = H + HH + 6


def _M(m_method: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(2)
    shape = {"scalar": (H,), "diagonal": (H, n), "full": (H, n, n)}[m_method]
    return -0.1 * np.abs(rng.standard_normal(shape)) + 0.01 * rng.standard_normal(shape)


@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
@pytest.mark.parametrize("fake", [True, False])
def test_rollout_replays_history_when_controller_fixed(m_method, fake):
    problem = Problem("quartic", STEPS)
    common = {"m_method": m_method, "H": H, "HH": HH, "weight_decay": 0.01,
              "base_learning_rate": "schedule", "scale_by_adam_betas": (0.9, 0.99),
              "grad_clip": 1.0, "initial_gpc_params": _M(m_method, problem.num_params)}
    params = problem.torch_params()
    opt = torch_metaopt({**common, "fake_the_dynamics": fake, "counterfactual": False,
                         "meta_lr": 0.0}, params)
    frozen_params = problem.torch_params()
    frozen = torch_metaopt({**common, "freeze_gpc_params": True}, frozen_params)
    for s in range(STEPS):
        cost_fn = problem.torch_costs[s]
        with torch.no_grad():
            cost_at_x = float(cost_fn(params))
        opt.step(cost_fn)
        frozen.step(cost_fn)
        if s >= H + HH:
            assert opt.history.gpc_cost_valid == 1.0
            np.testing.assert_allclose(float(opt.history.gpc_cost), cost_at_x, rtol=1e-12)
        for p, q in zip(params, frozen_params, strict=True):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=0,
                                       atol=1e-13)
    assert opt.history.gpc_cost_valid == 1.0 and STEPS > H + HH
    assert torch.count_nonzero(opt.history.grad_M) > 0, "meta-gradients flowed, lr was 0"


def test_rollouts_replay_the_rates_a_torch_lr_scheduler_played():
    """A torch LR scheduler changes param_groups[0]["lr"]; real rollouts replay each past
    step with the rate it was played with, so the replay stays exact."""
    problem = Problem("quartic", STEPS)
    params = problem.torch_params()
    opt = torch_metaopt({"H": H, "HH": HH, "meta_lr": 0.0, "scale_by_adam_betas": (0.9, 0.99),
                         "initial_gpc_params": _M("scalar", problem.num_params)}, params)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    rates = set()
    for s in range(STEPS):
        cost_fn = problem.torch_costs[s]
        with torch.no_grad():
            cost_at_x = float(cost_fn(params))
        rates.add(opt.param_groups[0]["lr"])
        opt.step(cost_fn)
        schedule.step()
        if s >= H + HH:
            np.testing.assert_allclose(float(opt.history.gpc_cost), cost_at_x, rtol=1e-12)
    assert len(rates) == STEPS
