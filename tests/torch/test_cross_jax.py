"""The torch MetaOpt against the JAX one: same params, M and controller cost (float64).

The option matrix is covered pairwise (every pair of values of every two options appears
in some run) by a small deterministic set of runs, on a quartic problem; a few runs on a
small MLP add a model whose Hessian changes from point to point.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from metaopt_twins import Problem, run_jax, run_torch

STEPS = 40
TOL = 1e-10

# Option -> the values to cover (the first is the plain setting).
FACTORS: dict[str, list] = {
    "m_method": ["scalar", "diagonal", "full"],
    "fake_the_dynamics": [False, True],
    "scale_by_adam_betas": [None, (0.9, 0.99)],
    "grad_clip": [None, 0.5],
    "weight_decay": [0.0, 0.01],
    "base_learning_rate": [0.1, "schedule"],
    "counterfactual": [True, False],
    "freeze_cost_fn_during_rollouts": [False, True],
    "max_gpc_norm": [None, 0.08],
    "meta_grad_clip": [None, 0.5],
    "meta": ["sgd", "adam"],
    "HH": [3, 1],
}


def pairwise_configs(factors: dict[str, list]) -> list[dict]:
    """A small set of option dicts covering every pair of values of every two options.

    Greedy and deterministic: each new run is the candidate (from a fixed pseudo-random
    pool) that covers the most pairs not yet covered."""
    names = list(factors)
    uncovered = {((a, i), (b, j)) for a, b in itertools.combinations(names, 2)
                 for i in range(len(factors[a])) for j in range(len(factors[b]))}
    rng = np.random.default_rng(0)
    pool = [{n: int(rng.integers(len(factors[n]))) for n in names} for _ in range(2000)]
    runs = []
    while uncovered:
        def gain(c):
            return sum(((a, c[a]), (b, c[b])) in uncovered
                       for a, b in itertools.combinations(names, 2))
        best = max(pool, key=gain)
        uncovered -= {((a, best[a]), (b, best[b])) for a, b in itertools.combinations(names, 2)}
        runs.append(best)
    return [{n: factors[n][c[n]] for n in names} for c in runs]


QUARTIC_RUNS = pairwise_configs(FACTORS)
MLP_RUNS = [
    {"m_method": "scalar", "scale_by_adam_betas": (0.9, 0.99), "weight_decay": 0.01},
    {"m_method": "diagonal", "fake_the_dynamics": True, "grad_clip": 0.5, "meta": "adam"},
    {"m_method": "full", "base_learning_rate": "schedule", "counterfactual": False,
     "meta_grad_clip": 0.5},
]


def _id(options: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items() if FACTORS[k][0] != v) or "plain"


def test_pairwise_matrix_covers_every_pair_of_option_values():
    for a, b in itertools.combinations(FACTORS, 2):
        seen = {(repr(r[a]), repr(r[b])) for r in QUARTIC_RUNS}
        want = {(repr(u), repr(v)) for u in FACTORS[a] for v in FACTORS[b]}
        assert seen == want, (a, b, want - seen)
    assert len(QUARTIC_RUNS) <= 12  # CI time: one JAX compilation per run


def _assert_same_run(options: dict, problem: Problem, use_backward: bool) -> None:
    jax_run = run_jax(options, problem, STEPS)
    torch_run = run_torch(options, problem, STEPS, use_backward=use_backward)
    for key in ("x", "M", "cost"):
        np.testing.assert_allclose(torch_run[key], jax_run[key], rtol=0, atol=TOL,
                                   err_msg=f"{key} differs")
    assert np.ptp(torch_run["M"], axis=0).max() > 1e-4, "the controller never moved"


@pytest.mark.parametrize("options", QUARTIC_RUNS, ids=[_id(o) for o in QUARTIC_RUNS])
def test_torch_matches_jax_on_quartic(options):
    _assert_same_run(options, Problem("quartic", STEPS),
                     use_backward=QUARTIC_RUNS.index(options) % 2 == 1)


@pytest.mark.parametrize("options", MLP_RUNS, ids=[_id(o) for o in MLP_RUNS])
def test_torch_matches_jax_on_mlp(options):
    _assert_same_run(options, Problem("mlp", STEPS), use_backward=False)


def test_logging_metrics_match_jax():
    """Same keys (torch adds the non-finite counters if the JAX side lacks them), and the
    same controller numbers; the history byte counts agree too."""
    options = {"m_method": "diagonal", "scale_by_adam_betas": (0.9, 0.99), "HH": 2}
    problem = Problem("quartic", 12)
    jax_m = run_jax(options, problem, 12)["metrics"]
    torch_m = run_torch(options, problem, 12)["metrics"]
    assert jax_m["gpc_cost_valid"] == torch_m["gpc_cost_valid"] == 1.0
    extra = set(torch_m) - set(jax_m)
    assert set(jax_m) <= set(torch_m)
    assert extra <= {"nonfinite_grad_steps", "nonfinite_meta_steps"}
    for key in [k for k in jax_m if k.startswith(("M_", "grad_M_", "gpc_cost"))]:
        # The JAX side summarises the controller in float32.
        np.testing.assert_allclose(torch_m[key], jax_m[key], rtol=1e-6, atol=1e-7, err_msg=key)
    for key in ("disturbance_history_bytes", "param_history_bytes"):
        assert torch_m[key] == jax_m[key], key
