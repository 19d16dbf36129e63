"""state_dict round trips, episode resets and state errors of the torch MetaOpt."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from metaopt_twins import Problem, torch_metaopt

from meta_opt.torch import MetaOpt

SPLIT, STEPS = 9, 18
REAL = {"m_method": "diagonal", "scale_by_adam_betas": (0.9, 0.99), "grad_clip": 1.0,
        "base_learning_rate": "schedule", "weight_decay": 0.01, "meta": "adam",
        "counterfactual": False}


def _flat(params) -> np.ndarray:
    return torch.cat([p.detach().reshape(-1) for p in params]).numpy()


def _continue(opt, params, problem, start, stop):
    xs = []
    for s in range(start, stop):
        opt.step(problem.torch_costs[s])
        xs.append(np.concatenate([_flat(params), opt.controller.detach().reshape(-1).numpy()]))
    return np.stack(xs)


@pytest.mark.parametrize("via", ["deepcopy", "torch.save"])
@pytest.mark.parametrize("options", [REAL, {"fake_the_dynamics": True, "m_method": "full"}],
                         ids=["real-replayed-costs", "fake"])
def test_state_dict_round_trip_mid_run_continues_exactly(options, via):
    """A second optimizer loading the state at step SPLIT (cost history, Adam moments, the
    controller's Adam state included) continues bit for bit like the first."""
    problem = Problem("quartic", STEPS)
    params = problem.torch_params()
    opt = torch_metaopt(options, params)
    _continue(opt, params, problem, 0, SPLIT)
    if via == "deepcopy":
        saved = copy.deepcopy(opt.state_dict())
    else:
        buffer = io.BytesIO()
        torch.save(opt.state_dict(), buffer)
        buffer.seek(0)
        fake = options.get("fake_the_dynamics", False)
        # Without a cost history the state is plain tensors and numbers.
        saved = torch.load(buffer, weights_only=fake)
    params_b = [p.detach().clone().requires_grad_() for p in params]
    opt_b = torch_metaopt(options, [torch.zeros_like(p, requires_grad=True) for p in params])
    opt_b.reset_for_new_episode(params_b)
    opt_b.load_state_dict(saved)
    first = _continue(opt, params, problem, SPLIT, STEPS)
    second = _continue(opt_b, params_b, problem, SPLIT, STEPS)
    np.testing.assert_array_equal(first, second)
    fresh = torch_metaopt(options, [p.detach().clone().requires_grad_() for p in params_b])
    assert not np.array_equal(fresh.controller.numpy(), opt.controller.detach().numpy())


def test_loaded_state_is_a_copy():
    problem = Problem("quartic", STEPS)
    params = problem.torch_params()
    opt = torch_metaopt(REAL, params)
    _continue(opt, params, problem, 0, SPLIT)
    saved = copy.deepcopy(opt.state_dict())
    snapshot = copy.deepcopy(saved)
    opt.load_state_dict(saved)
    _continue(opt, params, problem, SPLIT, STEPS)
    for key in ("disturbances", "param_history", "grad_history"):
        torch.testing.assert_close(saved["history"][key], snapshot["history"][key], rtol=0,
                                   atol=0)


def test_episode_reset_keeps_controller_and_its_optimizer_state():
    """After a reset, the next episode plays exactly what a fresh optimizer started from the
    learned M and the controller optimizer's state plays; the counters survive."""
    problem = Problem("quartic", STEPS)
    params = problem.torch_params()
    opt = torch_metaopt(REAL, params)
    _continue(opt, params, problem, 0, SPLIT)
    opt.history.nonfinite_grad_steps = 3
    M, meta_state = opt.controller.detach().clone(), copy.deepcopy(
        opt.meta_optimizer.state_dict())
    new_params = problem.torch_params()
    opt.reset_for_new_episode(new_params)
    assert opt.history.step == 0 and opt.history.gpc_cost_valid == 0.0
    assert float(opt.history.disturbances.abs().sum()) == 0.0
    assert opt.history.nonfinite_grad_steps == 3
    fresh_params = problem.torch_params()
    fresh = torch_metaopt({**REAL, "initial_gpc_params": M.numpy()}, fresh_params)
    fresh.meta_optimizer.load_state_dict(meta_state)
    np.testing.assert_array_equal(_continue(opt, new_params, problem, 0, SPLIT),
                                  _continue(fresh, fresh_params, problem, 0, SPLIT))
    updates_per_episode = SPLIT - (2 + 3)  # controller updates from step H + HH on
    assert int(opt.meta_optimizer.state_dict()["state"][0]["step"]) == 2 * updates_per_episode


def test_reset_refuses_another_model():
    opt = MetaOpt([torch.zeros(3, requires_grad=True)])
    with pytest.raises(ValueError, match=r"new params have shapes \[\(4,\)\].*for \[\(3,\)\]"):
        opt.reset_for_new_episode([torch.zeros(4, requires_grad=True)])


def test_load_state_dict_refuses_other_options():
    params = [torch.zeros(3, requires_grad=True)]
    saved = MetaOpt(params, H=4, m_method="diagonal").state_dict()
    with pytest.raises(ValueError, match=r"saved controller has shape \(4, 3\).*\(4,\)"):
        MetaOpt(params, H=4).load_state_dict(saved)
    saved = MetaOpt(params, HH=3).state_dict()
    with pytest.raises(ValueError, match="disturbances is a tensor of shape"):
        MetaOpt(params).load_state_dict(saved)
