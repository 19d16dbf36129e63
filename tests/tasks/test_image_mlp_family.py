"""ImageMLPFamily: sampled cfgs are pytrees of arrays, members vmap, and `lax.switch` picks
the same activation a fixed task would use."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from meta_opt.tasks import ImageMLPFamily, ImageMLPTask


@pytest.fixture(scope="module")
def family():
    return ImageMLPFamily("digits", 8, (16,), activations=("relu", "tanh", "sigmoid"),
                          batch_size=32)  # fmt: skip


def test_vmap_over_8_sampled_cfgs_trains_20_steps_and_every_loss_falls(family):
    cfgs = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 8))
    assert cfgs["init_scale"].shape == (8,) and cfgs["activation"].dtype == jnp.int32
    assert len(set(np.asarray(cfgs["activation"]).tolist())) > 1  # several activations drawn
    tx = optax.adam(3e-2)
    data = family.data_arrays
    eval_batch = family.task_fn(None).batch_at(data["inner_valid"], 0, 128)

    def train_one(cfg, key):
        task = family.task_fn(cfg)
        k_init, k_loop = jax.random.split(key)
        params = task.init(k_init)
        before = task.loss(params, key, eval_batch)

        def step(carry, k):
            params, opt_state = carry
            batch = task.sample_batch(data["train"], k)
            grads = jax.grad(task.loss)(params, k, batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                      jax.random.split(k_loop, 20))  # fmt: skip
        return before, task.loss(params, key, eval_batch)

    keys = jax.random.split(jax.random.PRNGKey(1), 8)
    before, after = jax.jit(jax.vmap(train_one))(cfgs, keys)
    assert np.all(np.isfinite(after))
    assert np.all(after < before - 0.2), (before, after)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_member_equals_fixed_task_with_that_activation_and_scaled_init(family, index):
    scale = 1.7
    member = family.task_fn({"init_scale": jnp.float32(scale), "activation": jnp.int32(index)})
    fixed = ImageMLPTask("digits", 8, (16,), family.activations[index])
    key = jax.random.PRNGKey(3)
    p_member, p_fixed = member.init(key), fixed.init(key)
    np.testing.assert_allclose(p_member["Dense_0"]["kernel"], scale * p_fixed["Dense_0"]["kernel"],
                               rtol=1e-6)  # fmt: skip
    np.testing.assert_array_equal(p_member["Dense_0"]["bias"], p_fixed["Dense_0"]["bias"])
    batch = member.sample_batch(family.data_arrays["train"], key, 16)
    np.testing.assert_allclose(member.loss(p_member, key, batch), fixed.loss(p_member, key, batch),
                               rtol=1e-6)  # fmt: skip


def test_sample_is_reproducible_and_within_range(family):
    a = family.sample(jax.random.PRNGKey(5))
    b = family.sample(jax.random.PRNGKey(5))
    assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x, y: bool(x == y), a, b))
    scales = jax.vmap(family.sample)(jax.random.split(jax.random.PRNGKey(0), 256))["init_scale"]
    assert 0.5 <= float(scales.min()) and float(scales.max()) <= 2.0
    with pytest.raises(ValueError, match="unknown activation 'swishy'"):
        ImageMLPFamily(activations=("swishy",))
