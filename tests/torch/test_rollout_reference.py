"""C(M) and grad_M of the torch MetaOpt against an independent loop-by-loop reference.

The reference is written from the equations alone: it recomputes every disturbance from
the recorded trajectory, replays the last HH steps with plain per-lag loops (the first
rollout step recomputed too, from its definition), and differentiates with naive
reverse-over-reverse autograd; its own gradient is checked against central finite
differences. This pins the semantics the JAX side shares: a frozen cost during rollouts
recomputes every step with f_t, and grad_clip acts inside T wherever T is applied.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from metaopt_twins import Problem, torch_metaopt

H, HH, T0, LAM, ETA, B1, B2 = 2, 3, 9, 0.01, 0.1, 0.9, 0.99


def _unflat(v):
    return [v[:3].view(3), v[3:].view(1, 2)]


def _grad(f, y):
    y = y if y.requires_grad else y.detach().requires_grad_()
    (g,) = torch.autograd.grad(f(_unflat(y)), y, create_graph=True)
    return g


def _transform(g, state, adam, clip):
    """T: clip to global norm `clip` (the branch is locally constant), then Adam scaling."""
    if clip is not None:
        norm = torch.linalg.vector_norm(g)
        if float(norm.detach()) >= clip:
            g = g / norm * clip
    if not adam:
        return g, state
    m, v, c = state
    m, v, c = B1 * m + (1 - B1) * g, B2 * v + (1 - B2) * g * g, c + 1
    return (m / (1 - B1**c)) / (torch.sqrt(v / (1 - B2**c) + 1e-16) + 1e-8), (m, v, c)


def reference_cost(M, xs, costs, t, fake, adam, clip, freeze_cost):
    """C(M) at step t from the recorded params xs[s] and costs[s], by plain loops."""
    zeros = torch.zeros_like(xs[0])
    state, w, states = (zeros, zeros, 0), [], []
    for s in range(t + 1):
        states.append(state)
        ws, state = _transform(_grad(costs[s], xs[s]).detach(), state, adam, clip)
        w.append(ws.detach())
        state = tuple(a.detach() if torch.is_tensor(a) else a for a in state)

    def lag(i, s):
        ws = w[s] if s >= 0 else zeros
        return M[i] @ ws if M.ndim == 3 else M[i] * ws

    y, state = xs[t - HH], states[t - HH]
    for k in range(HH):
        s = t - HH + k
        if fake:
            v = w[s]
        else:  # recomputed at y_k, k = 0 included, from T's state at t - HH
            v, state = _transform(_grad(costs[t] if freeze_cost else costs[s], y), state,
                                  adam, clip)
        y = (1 - LAM) * y - ETA * v + sum(lag(i, s - i) for i in range(H))
    return costs[t](_unflat(y))


CASES = [
    # m_method, fake, adam, clip, freeze_cost
    ("scalar", True, False, None, False),
    ("scalar", False, True, 0.5, False),
    ("scalar", False, False, 0.5, True),
    ("diagonal", False, True, None, True),
    ("full", False, False, 0.5, False),
    ("full", False, True, 0.5, True),
]


@pytest.mark.parametrize("m_method,fake,adam,clip,freeze_cost", CASES)
def test_controller_cost_and_gradient_match_reference(m_method, fake, adam, clip, freeze_cost):
    """At step T0 (the controller has learned since step H + HH, so its M is not the one
    played), gpc_cost equals the reference C(M), and the meta-gradient, read off as
    M_before - M_after of one meta SGD step at rate 1, equals the reference's autograd
    gradient, itself checked against central finite differences."""
    options = {"m_method": m_method, "fake_the_dynamics": fake, "H": H, "HH": HH,
               "weight_decay": LAM, "base_learning_rate": ETA, "grad_clip": clip,
               "scale_by_adam_betas": (B1, B2) if adam else None,
               "freeze_cost_fn_during_rollouts": freeze_cost, "meta_lr": 0.05}
    problem = Problem("quartic", T0 + 1)
    params = problem.torch_params()
    opt = torch_metaopt(options, params)
    xs = []
    for s in range(T0):
        xs.append(torch.cat([p.detach().reshape(-1) for p in params]))
        opt.step(problem.torch_costs[s])
    xs.append(torch.cat([p.detach().reshape(-1) for p in params]))
    M = opt.controller.detach().clone()
    assert opt.history.gpc_cost_valid == 1.0

    probe = copy.deepcopy(opt)
    probe.meta_optimizer.param_groups[0]["lr"] = 1.0
    probe.step(problem.torch_costs[T0])
    grad_M = M - probe.controller.detach()

    M_ref = M.clone().requires_grad_()
    cost = reference_cost(M_ref, xs, problem.torch_costs, T0, fake, adam, clip, freeze_cost)
    (ref_grad,) = torch.autograd.grad(cost, M_ref)
    np.testing.assert_allclose(float(probe.history.gpc_cost), float(cost.detach()), rtol=1e-12)
    np.testing.assert_allclose(grad_M.numpy(), ref_grad.numpy(), rtol=1e-9, atol=1e-12)

    direction = torch.as_tensor(np.random.default_rng(0).standard_normal(M.shape))
    h = 1e-5

    def ref_at(m):
        return float(reference_cost(m, xs, problem.torch_costs, T0, fake, adam, clip,
                                    freeze_cost))

    fd = (ref_at(M + h * direction) - ref_at(M - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(torch.sum(ref_grad * direction)), fd, rtol=1e-6)
