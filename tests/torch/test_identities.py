"""Controllers that make MetaOpt a known optimizer (float64, frozen controllers).

H = 1, M_0 = -a is SGD at learning rate eta + a; eta = 0, M_i = -eta' beta^i is heavy-ball
momentum truncated to H terms (untruncated, torch.optim.SGD's momentum, when H exceeds the
steps taken); M = 0 with weight decay lambda is SGD with decoupled weight decay, which
torch.optim.SGD's coupled decay equals at weight_decay = lambda / eta.
"""

from __future__ import annotations

import numpy as np
import torch
from metaopt_twins import Problem

from meta_opt.torch import MetaOpt

STEPS = 25


def _trajectory(make_optimizer, problem: Problem, use_step_cost: bool) -> np.ndarray:
    params = problem.torch_params()
    opt = make_optimizer(params)
    xs = []
    for s in range(STEPS):
        cost_fn = problem.torch_costs[s]
        opt.zero_grad()
        cost_fn(params).backward()
        opt.step(cost_fn) if use_step_cost else opt.step()
        xs.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy())
    return np.stack(xs)


def _frozen(params, M, **kwargs):
    return MetaOpt(params, freeze_gpc_params=True, initial_gpc_params=np.asarray(M),
                   scale_by_adam_betas=None, weight_decay=0.0, dtype="float64", **kwargs)


def test_one_lag_controller_is_sgd_with_the_summed_learning_rate():
    problem = Problem("mlp", STEPS)
    a, eta = 0.05, 0.2
    metaopt = _trajectory(lambda p: _frozen(p, [-a], H=1, base_learning_rate=eta), problem,
                          True)
    sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=eta + a), problem, False)
    np.testing.assert_allclose(metaopt, sgd, rtol=0, atol=1e-13)


def test_geometric_controller_is_truncated_heavy_ball():
    problem = Problem("mlp", STEPS)
    lr, beta, H = 0.1, 0.8, 4
    M = [-lr * beta**i for i in range(H)]
    metaopt = _trajectory(lambda p: _frozen(p, M, H=H, base_learning_rate=0.0), problem, True)
    # Heavy ball truncated to H terms, by its definition.
    params = problem.torch_params()
    grads, ref = [], []
    for s in range(STEPS):
        g = torch.autograd.grad(problem.torch_costs[s](params), params)
        grads.append(torch.cat([t.reshape(-1) for t in g]))
        step = -lr * sum(beta**i * grads[s - i] for i in range(min(H, s + 1)))
        with torch.no_grad():
            for p, u in zip(params, step.split([p.numel() for p in params]), strict=True):
                p.add_(u.view_as(p))
        ref.append(torch.cat([p.detach().reshape(-1) for p in params]).numpy())
    np.testing.assert_allclose(metaopt, np.stack(ref), rtol=0, atol=1e-13)
    assert np.abs(metaopt - _trajectory(
        lambda p: torch.optim.SGD(p, lr=lr, momentum=beta), problem, False)).max() > 1e-6


def test_long_geometric_controller_is_torch_momentum():
    problem = Problem("mlp", STEPS)
    lr, beta = 0.1, 0.8
    M = [-lr * beta**i for i in range(STEPS)]
    metaopt = _trajectory(lambda p: _frozen(p, M, H=STEPS, base_learning_rate=0.0), problem,
                          True)
    momentum = _trajectory(lambda p: torch.optim.SGD(p, lr=lr, momentum=beta), problem, False)
    np.testing.assert_allclose(metaopt, momentum, rtol=0, atol=1e-13)


def test_zero_controller_is_sgd_with_decoupled_weight_decay():
    problem = Problem("quartic", STEPS)
    lam, eta = 0.03, 0.2
    metaopt = _trajectory(
        lambda p: MetaOpt(p, freeze_gpc_params=True, initial_m0=0.0, H=3, weight_decay=lam,
                          base_learning_rate=eta, scale_by_adam_betas=None, dtype="float64"),
        problem, True)
    sgd = _trajectory(lambda p: torch.optim.SGD(p, lr=eta, weight_decay=lam / eta), problem,
                      False)
    np.testing.assert_allclose(metaopt, sgd, rtol=0, atol=1e-13)
