"""Non-finite gradients and meta-gradients never reach the parameters or M.

A step whose gradient has a non-finite entry is skipped entirely (only the counter moves);
a controller update whose C(M) or grad_M is non-finite is skipped and the step is played
with the current M.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from metaopt_twins import Problem, torch_metaopt

OPTIONS = {"H": 1, "HH": 2, "scale_by_adam_betas": (0.9, 0.99), "meta": "adam"}


def _run(opt, problem, steps):
    for s in range(steps):
        opt.step(problem.torch_costs[s])


def _assert_same_state(a, b):
    for key, value in a["history"].items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b["history"][key], rtol=0, atol=0)
        elif isinstance(value, tuple):
            for u, v in zip(value, b["history"][key], strict=True):
                torch.testing.assert_close(torch.as_tensor(u), torch.as_tensor(v), rtol=0,
                                           atol=0)
        elif key == "cost_fn_history":  # copies of the same batches
            for f, f_b in zip(value, b["history"][key], strict=True):
                torch.testing.assert_close(f.b, f_b.b, rtol=0, atol=0)
        elif key != "nonfinite_grad_steps":
            assert value == b["history"][key], key
    torch.testing.assert_close(a["controller"], b["controller"], rtol=0, atol=0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_gradient_skips_the_whole_step(bad):
    problem = Problem("quartic", 10)
    params = problem.torch_params()
    opt = torch_metaopt(OPTIONS, params)
    _run(opt, problem, 6)
    before_params = [p.detach().clone() for p in params]
    before = copy.deepcopy(opt.state_dict())
    cost_fn = problem.torch_costs[6]
    opt.zero_grad()
    cost_fn(params).backward()
    params[1].grad[0, 1] = bad
    opt.step(cost_fn)
    for p, q in zip(params, before_params, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=0, atol=0)
    after = opt.state_dict()
    assert after["history"]["nonfinite_grad_steps"] == 1
    assert after["history"]["step"] == 6
    _assert_same_state(before, after)


def test_nonfinite_controller_cost_skips_the_controller_update_only():
    """C(M) = NaN (the cost is NaN away from the current params): M, its optimizer state,
    grad_M and gpc_cost stay; the step is played with the current M."""
    problem = Problem("quartic", 10)
    params = problem.torch_params()
    opt = torch_metaopt({**OPTIONS, "scale_by_adam_betas": None, "fake_the_dynamics": True},
                        params)
    _run(opt, problem, 6)
    before = copy.deepcopy(opt.state_dict())
    good = problem.torch_costs[6]
    x = [p.detach().clone() for p in params]

    def nan_elsewhere(ps):
        moved = sum(torch.sum((p - q) ** 2) for p, q in zip(ps, x, strict=True))
        return good(ps) + torch.where(moved > 0, torch.nan, 0.0)

    opt.zero_grad()
    good(params).backward()
    g = [p.grad.clone() for p in params]
    opt.step(nan_elsewhere)
    after = opt.state_dict()
    assert after["history"]["nonfinite_meta_steps"] == 1
    assert after["history"]["step"] == 7
    torch.testing.assert_close(after["controller"], before["controller"], rtol=0, atol=0)
    torch.testing.assert_close(after["history"]["grad_M"], before["history"]["grad_M"])
    assert after["history"]["gpc_cost"] == before["history"]["gpc_cost"]
    assert after["meta_optimizer"]["state"][0]["step"] == before["meta_optimizer"]["state"][0][
        "step"]
    # H = 1 and raw gradients: the played update is (M_0 - eta) g_t.
    M0 = float(before["controller"][0])
    for p, p0, gp in zip(params, x, g, strict=True):
        torch.testing.assert_close(p.detach(), p0 + (M0 - 0.1) * gp, rtol=0, atol=1e-15)


def test_counters_survive_episode_resets_and_reach_the_metrics():
    problem = Problem("quartic", 10)
    params = problem.torch_params()
    opt = torch_metaopt(OPTIONS, params)
    cost_fn = problem.torch_costs[0]
    opt.zero_grad()
    cost_fn(params).backward()
    params[0].grad[0] = float("nan")
    opt.step(cost_fn)
    opt.reset_for_new_episode()
    assert opt.logging_metrics()["nonfinite_grad_steps"] == 1.0


def test_without_skipping_a_nonfinite_gradient_reaches_the_params():
    problem = Problem("quartic", 10)
    params = problem.torch_params()
    opt = torch_metaopt({**OPTIONS, "skip_nonfinite": False}, params)
    cost_fn = problem.torch_costs[0]
    opt.zero_grad()
    cost_fn(params).backward()
    params[0].grad[0] = float("nan")
    opt.step(cost_fn)
    assert np.isnan(params[0].detach().numpy()).any()
    assert opt.history.nonfinite_grad_steps == 0
