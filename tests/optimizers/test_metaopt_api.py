"""MetaOpt's public surface: config, errors, logging metrics, controller files, chains."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_opt.optimizers import (
    ConfigError,
    CostFn,
    MetaOptConfig,
    OptimizerConfig,
    find_metaopt_state,
    list_optimizers,
    load_controller,
    make_cost_fn,
    metaopt,
    save_controller,
)


def mse(params, batch, scale=1.0):
    return scale * jnp.mean((batch["x"] @ params["w"] - batch["y"]) ** 2)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    return {"x": jnp.asarray(rng.standard_normal((4, 3)), jnp.float32),
            "y": jnp.asarray(rng.standard_normal(4), jnp.float32)}


PARAMS = {"w": jnp.zeros(3)}


def test_cost_fn_binds_arguments_and_is_a_pytree_usable_under_jit_and_vmap():
    f = make_cost_fn(mse, _batch(), scale=2.0)
    assert isinstance(f, CostFn)
    np.testing.assert_allclose(f(PARAMS), mse(PARAMS, _batch(), scale=2.0))
    np.testing.assert_allclose(jax.jit(lambda f, p: f(p))(f, PARAMS), f(PARAMS))
    stacked = jax.tree.map(lambda *a: jnp.stack(a), f, make_cost_fn(mse, _batch(1), scale=2.0))
    vals = jax.vmap(lambda f: f(PARAMS))(stacked)
    np.testing.assert_allclose(vals[1], mse(PARAMS, _batch(1), scale=2.0), rtol=1e-6)


def test_config_is_registered_and_round_trips_with_nested_meta_optimizer_and_schedule():
    assert "MetaOpt" in list_optimizers() and MetaOptConfig.requires_cost_fn
    cfg = MetaOptConfig.from_dict({
        "optimizer_name": "MetaOpt", "H": 3, "HH": 2, "m_method": "diagonal",
        "scale_by_adam_betas": [0.9, 0.99], "dtype": "bfloat16",
        "base_learning_rate": {"schedule_name": "Cosine", "init_value": 0.1,
                               "decay_steps": 100} if "Cosine" in _schedules() else 0.1,
        "meta_optimizer": {"optimizer_name": "AdamW", "learning_rate": 1e-3},
    })
    back = OptimizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.scale_by_adam_betas == (0.9, 0.99)
    f = make_cost_fn(mse, _batch())
    tx = back.make_jax(example_cost_fn=f)
    state = tx.init(PARAMS)
    u, state = jax.jit(lambda g, s, p: tx.update(g, s, p, cost_fn=f))(PARAMS, state, PARAMS)
    assert state.disturbances.dtype == jnp.bfloat16 and u["w"].dtype == jnp.float32


def _schedules():
    from meta_opt.optimizers import list_schedules
    return list_schedules()


@pytest.mark.parametrize("bad,match", [
    ({"H": 0}, "H"), ({"m_method": "banded"}, "m_method"), ({"dtype": "int8"}, "dtype"),
    ({"max_gpc_norm": -1.0}, "max_gpc_norm"), ({"weight_decay": -0.1}, "weight_decay"),
])
def test_config_rejects_bad_values_naming_the_field(bad, match):
    with pytest.raises(ConfigError, match=match):
        MetaOptConfig(**bad)


def test_bad_arguments_give_clear_errors():
    with pytest.raises(ValueError, match="H .* >= 1, got 0"):
        metaopt(0.1, H=0)
    with pytest.raises(ValueError, match="unknown m_method 'banded'.*scalar, diagonal, full"):
        metaopt(0.1, m_method="banded")
    with pytest.raises(ValueError, match="example_cost_fn"):
        metaopt(0.1, HH=2).init(PARAMS)  # real rollouts replaying costs need the structure
    tx = metaopt(0.1, fake_the_dynamics=True)
    with pytest.raises(ValueError, match="cost_fn"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS)
    big = {"w": jnp.zeros((100, 100))}
    with pytest.raises(ValueError, match=r"'full' controller for 10000 parameters needs .*GiB"):
        metaopt(0.1, m_method="full", fake_the_dynamics=True,
                max_full_controller_bytes=2**20).init(big)
    f = make_cost_fn(mse, _batch())
    tx = metaopt(0.1, example_cost_fn=f)
    other = make_cost_fn(mse, {"x": jnp.zeros((5, 3)), "y": jnp.zeros(5)})
    with pytest.raises(ValueError, match="example_cost_fn"):
        tx.update(PARAMS, tx.init(PARAMS), PARAMS, cost_fn=other)


def test_frozen_controller_needs_no_cost_fn_and_keeps_only_H_disturbances():
    tx = metaopt(0.1, H=3, HH=5, freeze_gpc_params=True)
    state = tx.init(PARAMS)
    assert state.disturbances.shape == (3, 3) and state.param_history is None
    _, state = tx.update(PARAMS, state, PARAMS)
    assert int(state.step) == 1


def test_logging_metrics_fold_learning_rate_into_M0_and_count_bytes_exactly():
    f = make_cost_fn(mse, _batch())
    H, HH, n = 3, 2, 3
    tx = metaopt(0.25, H=H, HH=HH, m_method="diagonal", scale_by_adam_betas=(0.9, 0.999),
                 example_cost_fn=f, initial_m0=-0.5, meta_optimizer=optax.adam(1e-3))
    state = tx.init(PARAMS)
    _, state = tx.update(PARAMS, state, PARAMS, cost_fn=f)
    m = jax.jit(lambda s: s.logging_metrics())(state)
    np.testing.assert_allclose(m["M_0"], -0.5 - 0.25)
    np.testing.assert_allclose(m["M_1"], 0.0)
    assert {f"grad_M_{i}" for i in range(H)} <= set(m) and "gpc_cost" in m
    assert m["nonfinite_grad_steps"] == 0 and m["nonfinite_meta_steps"] == 0
    want = {
        "disturbance_history_bytes": (H + HH) * n * 4 + HH * n * 4,  # + raw grads
        "param_history_bytes": HH * n * 4,  # (eta, lambda constant: not recorded)
        "cost_fn_history_bytes": HH * (4 * 3 + 4) * 4,
        "disturbance_transform_state_bytes": 2 * (4 + 2 * n * 4),  # now + step t-HH
    }
    M_bytes, meta_adam_bytes = H * n * 4, 4 + 2 * H * n * 4
    scalars = 4 * 7  # step, num_params, learning_rate, gpc_cost(_valid), the 2 counters
    want["total_bytes"] = sum(want.values()) + M_bytes + meta_adam_bytes + H * 4 + scalars
    assert state.memory_bytes() == want
    assert want["total_bytes"] == sum(x.nbytes for x in jax.tree.leaves(state))
    for k, v in want.items():
        assert m[k].dtype == jnp.int32 and int(m[k]) == v, k


def test_byte_counts_above_float32_precision_are_exact():
    """2**23 parameters: the total (12 n + 36 bytes) is above 2**26, where float32 keeps
    only multiples of 8. Nothing is allocated: only the metrics leave the jitted init."""
    n = 2**23
    tx = metaopt(0.1, H=1, HH=1, fake_the_dynamics=True)
    metrics = jax.jit(lambda: tx.init({"w": jnp.zeros(n)}).logging_metrics())()
    expected = {"disturbance_history_bytes": 2 * n * 4, "param_history_bytes": n * 4}
    for k, v in expected.items():
        assert metrics[k].dtype == jnp.int32 and int(metrics[k]) == v
    total = int(metrics["total_bytes"])
    assert total == 3 * n * 4 + 4 * 7 + 4 + 4  # + 7 scalars, the (H,) M and grad_M
    assert int(np.float32(total)) != total  # float32 could not have said it


def test_controller_save_load_and_deploy_frozen(tmp_path):
    f = make_cost_fn(mse, _batch())
    tx = metaopt(0.1, H=2, HH=2, m_method="diagonal", example_cost_fn=f,
                 initial_m0=-0.3)
    chain = optax.chain(tx, optax.scale(1.0))
    state = chain.init(PARAMS)
    assert find_metaopt_state(state) is state[0] and find_metaopt_state((1, 2)) is None
    _, state = chain.update(PARAMS, state, PARAMS, cost_fn=f)
    path = save_controller(tmp_path, state)
    assert path.endswith("controller.npz")
    ctrl = load_controller(tmp_path)
    assert ctrl["m_method"] == "diagonal" and ctrl["H"] == 2 and ctrl["M"].shape == (2, 3)
    frozen = MetaOptConfig(H=2, m_method="diagonal", freeze_gpc_params=True,
                           initial_gpc_params=str(tmp_path)).make_jax()
    np.testing.assert_array_equal(np.asarray(frozen.init(PARAMS).M), ctrl["M"])
    with pytest.raises(ValueError, match=r"'diagonal' controller of shape \(2, 3\).*'scalar'"):
        metaopt(0.1, H=2, freeze_gpc_params=True, initial_gpc_params=path).init(PARAMS)
    with pytest.raises(ValueError, match="shape"):
        metaopt(0.1, H=2, m_method="diagonal", freeze_gpc_params=True,
                initial_gpc_params=path).init({"w": jnp.zeros(4)})


def test_float64_controller_round_trips_exactly(tmp_path):
    from jax import enable_x64

    with enable_x64():
        rng = np.random.default_rng(0)
        M = rng.standard_normal((2, 3))  # float64, not representable in float32
        params = {"w": jnp.zeros(3, jnp.float64)}
        tx = metaopt(0.1, H=2, m_method="diagonal", freeze_gpc_params=True,
                     initial_gpc_params=M)
        state = tx.init(params)
        assert state.M.dtype == jnp.float64
        save_controller(tmp_path, state)
        loaded = load_controller(tmp_path)
        assert loaded["M"].dtype == np.float64
        np.testing.assert_array_equal(loaded["M"], M)
        again = metaopt(0.1, H=2, m_method="diagonal", freeze_gpc_params=True,
                        initial_gpc_params=tmp_path).init(params)
        np.testing.assert_array_equal(np.asarray(again.M), M)


@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
def test_float64_initial_m0_is_exact_not_its_float32_rounding(m_method):
    from jax import enable_x64

    with enable_x64():
        params = {"w": jnp.zeros(3, jnp.float64)}
        state = metaopt(0.1, H=2, m_method=m_method, initial_m0=-0.01,
                        freeze_gpc_params=True).init(params)
        m0 = np.asarray(state.M)[0]
        diagonal = np.diag(m0) if m_method == "full" else m0
        assert state.M.dtype == jnp.float64
        assert np.all(diagonal == -0.01)  # float32(-0.01) differs from -0.01 by ~2e-10


@pytest.mark.parametrize("m_method", ["scalar", "diagonal", "full"])
def test_initial_controller_is_projected_onto_the_ball(m_method):
    """An out-of-ball initial M would be played for the H + HH warm-up steps."""
    r, n = 0.1, 3
    M0 = {"scalar": np.array([-0.5, 0.05]), "diagonal": np.array([[-0.5, 0.05, 0.3],
                                                                    [0.0, 0.2, -0.01]]),
          "full": np.stack([np.diag([-0.5, 0.05, 0.3]), 0.01 * np.ones((n, n))])}[m_method]
    want = {"scalar": np.array([-0.1, 0.05]),
            "diagonal": np.clip(M0, -r, r),
            "full": np.stack([M0[0] * r / np.linalg.norm(M0[0]), M0[1]])}[m_method]
    state = metaopt(0.1, H=2, m_method=m_method, max_gpc_norm=r, freeze_gpc_params=True,
                    initial_gpc_params=M0).init(PARAMS)
    np.testing.assert_allclose(np.asarray(state.M), want, rtol=1e-6)
    m0 = metaopt(0.1, H=2, m_method=m_method, max_gpc_norm=r, freeze_gpc_params=True,
                 initial_m0=-0.5).init(PARAMS)
    np.testing.assert_allclose(np.asarray(m0.M)[0], {"scalar": -0.1, "diagonal": -0.1 * np.ones(n),
                               "full": np.eye(n) * -r / np.sqrt(n)}[m_method], rtol=1e-6)
