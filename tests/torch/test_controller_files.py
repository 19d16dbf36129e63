"""controller.npz files: exact round trips and interchangeable with the JAX side."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from metaopt_twins import Problem, run_jax, run_torch

from meta_opt import optimizers as jax_side
from meta_opt.torch import MetaOpt, load_controller, save_controller

STEPS = 12


def _learned(m_method: str):
    """A torch MetaOpt whose float64 controller has learned for a few steps."""
    return run_torch({"m_method": m_method, "HH": 2}, Problem("quartic", STEPS), STEPS)[
        "optimizer"]


@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
def test_torch_controller_file_round_trips_exactly(tmp_path, m_method):
    opt = _learned(m_method)
    file = opt.save_controller(tmp_path)
    assert file == str(tmp_path / "controller.npz")
    loaded = load_controller(tmp_path)
    assert loaded["m_method"] == m_method and loaded["H"] == 2 and loaded["num_params"] == 5
    assert loaded["M"].dtype == np.float64
    np.testing.assert_array_equal(loaded["M"], opt.controller.detach().numpy())
    again = MetaOpt([torch.zeros(3, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)],
                    H=2, m_method=m_method, initial_gpc_params=file)
    np.testing.assert_array_equal(again.controller.numpy(), opt.controller.detach().numpy())


def _frozen_options(file):
    return {"m_method": "diagonal", "H": 2, "freeze_gpc_params": True,
            "initial_gpc_params": file, "scale_by_adam_betas": (0.9, 0.99)}


def test_controller_saved_by_torch_plays_the_same_updates_in_jax(tmp_path):
    file = _learned("diagonal").save_controller(tmp_path)
    problem = Problem("quartic", STEPS)
    on_jax = run_jax(_frozen_options(file), problem, STEPS)
    on_torch = run_torch(_frozen_options(file), problem, STEPS)
    np.testing.assert_allclose(on_torch["x"], on_jax["x"], rtol=0, atol=1e-12)
    assert jax_side.load_controller(file)["M"].dtype == np.float64  # float64 kept


def test_controller_saved_by_jax_plays_the_same_updates_in_torch(tmp_path):
    problem = Problem("quartic", STEPS)
    with jax.enable_x64():
        tx = jax_side.metaopt(0.1, H=2, HH=2, m_method="diagonal", dtype=jnp.float64,
                              meta_optimizer=optax.sgd(0.05), initial_m0=-0.0625,
                              example_cost_fn=problem.jax_costs[0])
        params = [jnp.asarray(p) for p in problem.params0]
        state = tx.init(params)

        @jax.jit
        def step(params, state, f):
            updates, state = tx.update(jax.grad(f)(params), state, params, cost_fn=f)
            return optax.apply_updates(params, updates), state

        for s in range(STEPS):
            params, state = step(params, state, problem.jax_costs[s])
        file = jax_side.save_controller(tmp_path, state)
        M = np.asarray(state.M)
    np.testing.assert_array_equal(load_controller(file)["M"], M)
    on_jax = run_jax(_frozen_options(M), problem, STEPS)  # the array itself, on the JAX side
    on_torch = run_torch(_frozen_options(file), problem, STEPS)
    np.testing.assert_allclose(on_torch["x"], on_jax["x"], rtol=0, atol=1e-12)


def test_controller_that_does_not_fit_is_refused_with_both_shapes(tmp_path):
    file = save_controller(tmp_path, np.zeros((3, 7)))
    with pytest.raises(ValueError, match=r"'diagonal' controller of shape \(3, 7\).*"
                                         r"m_method='diagonal' with H=3 on 5.*\(3, 5\)"):
        MetaOpt([torch.zeros(5)], H=3, m_method="diagonal", initial_gpc_params=file)
    with pytest.raises(FileNotFoundError, match="no controller file"):
        load_controller(tmp_path / "missing")
    with pytest.raises(ValueError, match="pass num_params"):
        save_controller(tmp_path, np.zeros(3))
