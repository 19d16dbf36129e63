"""Meshes and MetaOpt state sharding on 8 simulated CPU devices (see conftest.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree
from jax.sharding import PartitionSpec

from meta_opt import sharding
from meta_opt.optimizers import make_cost_fn, metaopt, reset_for_new_episode


def test_make_mesh_shapes_and_errors():
    assert len(jax.devices()) == 8
    mesh = sharding.make_mesh(2, 4)
    assert dict(mesh.shape) == {"batch": 2, "opt": 4}
    with pytest.raises(ValueError, match="needs 16 devices but only 8"):
        sharding.make_mesh(4, 4)
    with pytest.raises(ValueError, match="must equal the number of devices given"):
        sharding.make_mesh(2, 2, devices=jax.devices()[:3])
    assert sharding.padded_size(13, mesh) == 16 and sharding.padded_size(13, None) == 13


def test_shard_batch_splits_leading_axis():
    mesh = sharding.make_mesh(8, 1)
    batch = sharding.shard_batch({"x": np.zeros((16, 3))}, mesh)
    assert batch["x"].sharding.spec == PartitionSpec("batch")
    with pytest.raises(ValueError, match="multiple of the axis size"):
        sharding.shard_batch({"x": np.zeros((6, 3))}, mesh)


def loss_fn(params, batch):
    pred = jnp.tanh(batch["x"] @ params["w"]) @ params["v"] + params["b"]
    return jnp.mean((pred - batch["y"]) ** 2)


def _assert_pinned(s, m_method):
    """Per-parameter buffers split along "opt" (rings by columns), the rest replicated."""
    opt_split, rows_split = PartitionSpec("opt"), PartitionSpec(None, "opt")
    assert s.disturbances.sharding.spec == rows_split
    assert s.param_history.sharding.spec == rows_split
    assert s.grad_history.sharding.spec == rows_split
    for t_state in (s.transform_state, s.lagged_transform_state):  # Adam's moments
        adam = t_state[0]
        assert adam.mu.sharding.spec == opt_split and adam.nu.sharding.spec == opt_split
        assert adam.count.sharding.spec == PartitionSpec()
    for scalar in (s.step, s.num_params, s.gpc_cost, s.nonfinite_grad_steps):
        assert scalar.sharding.spec == PartitionSpec()
    assert s.M.sharding.spec == (rows_split if m_method == "diagonal" else PartitionSpec())


@pytest.mark.parametrize("m_method", ["scalar", "diagonal"])
def test_sharded_metaopt_matches_unsharded(m_method):
    """n = 13 parameters (padded to 16 over 8 'opt' devices): the per-parameter buffers are
    split along 'opt', the padding never reaches params or updates, and 12 steps of real
    rollouts through Adam-scaled disturbances match the unsharded optimizer to 1e-6."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 3)), jnp.float32) * 0.5,
              "v": jnp.asarray(rng.standard_normal(3), jnp.float32), "b": jnp.zeros(())}
    batches = {"x": jnp.asarray(rng.standard_normal((12, 8, 3)), jnp.float32),
               "y": jnp.asarray(rng.standard_normal((12, 8)), jnp.float32)}
    example = make_cost_fn(loss_fn, jax.tree.map(lambda b: b[0], batches))

    def run(mesh):
        tx = metaopt(0.05, H=2, HH=3, m_method=m_method, scale_by_adam_betas=(0.9, 0.99),
                     meta_optimizer=optax.sgd(0.01), example_cost_fn=example, mesh=mesh)

        def step(carry, batch):
            p, s = carry
            f = make_cost_fn(loss_fn, batch)
            g = jax.grad(f)(p)
            u, s = tx.update(g, s, p, cost_fn=f)
            return (optax.apply_updates(p, u), s), u

        return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), batches))(params)

    (p_ref, s_ref), u_ref = run(None)
    mesh = sharding.make_mesh(1, 8)
    (p, s), u = run(mesh)
    tx = metaopt(0.05, H=2, HH=3, m_method=m_method, scale_by_adam_betas=(0.9, 0.99),
                 meta_optimizer=optax.sgd(0.01), example_cost_fn=example, mesh=mesh)
    for state in (s, tx.init(params)):  # init outside jit places its leaves as the step does
        _assert_pinned(state, m_method)

    assert s.disturbances.shape == (5, 16) and s_ref.disturbances.shape == (5, 13)
    if m_method == "diagonal":
        assert not np.any(np.asarray(s.M)[:, 13:])  # padding stays exactly 0
    assert jax.tree.structure(u) == jax.tree.structure(u_ref)
    np.testing.assert_allclose(ravel_pytree(p)[0], ravel_pytree(p_ref)[0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.M)[..., :13] if m_method == "diagonal"
                               else np.asarray(s.M), np.asarray(s_ref.M), atol=1e-6)
    assert float(s.gpc_cost_valid) == 1.0


@pytest.mark.parametrize("mesh_shape", [None, (1, 8), (2, 4)])
def test_jitted_step_traces_once_also_after_an_episode_reset(mesh_shape):
    """init's leaves carry the shardings the step returns, and so does a reset state, so
    the jitted step is traced once (before, init's scalars sat on one device and the
    step returned them replicated: a second trace). On a (2, 4) mesh the batches (and the
    example cost) are split over "batch" and the cost history keeps that split."""
    mesh = None if mesh_shape is None else sharding.make_mesh(*mesh_shape)
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((3, 3)), jnp.float32),
              "v": jnp.ones(3), "b": jnp.zeros(())}
    batches = [{"x": jnp.asarray(rng.standard_normal((8, 3)), jnp.float32),
                "y": jnp.asarray(rng.standard_normal(8), jnp.float32)} for _ in range(6)]
    if mesh is not None:  # the user's params and batches live on the mesh too
        params = jax.device_put(params, sharding.replicated_sharding(mesh))
        batches = [sharding.shard_batch(b, mesh) for b in batches]
    tx = metaopt(0.05, H=2, HH=2, scale_by_adam_betas=(0.9, 0.99), mesh=mesh,
                 example_cost_fn=make_cost_fn(loss_fn, batches[0]))
    traces = []

    @jax.jit
    def step(p, s, batch):
        traces.append(1)
        f = make_cost_fn(loss_fn, batch)
        u, s = tx.update(jax.grad(f)(p), s, p, cost_fn=f)
        return optax.apply_updates(p, u), s

    p, s = params, tx.init(params)
    for batch in batches[:4]:
        p, s = step(p, s, batch)
    s = reset_for_new_episode(s, params)
    for batch in batches[4:]:
        p, s = step(params, s, batch)
    assert len(traces) == 1
    if mesh_shape == (2, 4):
        assert s.cost_fn_history[0].sharding.spec == PartitionSpec(None, "batch")
